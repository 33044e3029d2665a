"""Where commands look for artifacts when none are named: ``exports/<model>/``."""

from __future__ import annotations

from pathlib import Path

from ..errors import InvalidModelError


def default_artifacts(exports_dir: Path = Path("exports")) -> list[Path]:
    """The newest ``exports/<model>/`` directory that holds exported artifacts."""
    dirs = [d for d in Path(exports_dir).glob("*") if d.is_dir() and list(d.glob("*.json"))]
    if not dirs:
        raise InvalidModelError(
            f"no exported artifacts in {exports_dir}/<model>/",
            hint="export first (cifar-deploy export --format all) or name the artifacts",
        )
    return [max(dirs, key=lambda d: max(p.stat().st_mtime for p in d.glob("*.json")))]
