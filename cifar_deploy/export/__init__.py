"""Export: SavedModel, TFLite (LiteRT) and ONNX (plus a Triton repository), one metadata contract.

``export_model`` turns a trained ``.keras`` file into one or more artifacts, each with a JSON
sidecar (see :mod:`.metadata`); formats come from one table (:func:`export_formats`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from ..errors import CifarDeployError, InvalidOptionError
from .base import (
    Artifact,
    ExportFormat,
    ExportOptions,
    export_formats,
    get_format,
    resolve_quantization,
    run_export,
)
from .metadata import Metadata, read_sidecar, sidecar_path
from .source import ExportSource, find_latest_checkpoint

log = logging.getLogger(__name__)

__all__ = [
    "Artifact", "ExportFormat", "ExportOptions", "Metadata", "export_formats", "export_model",
    "export_targets", "find_latest_checkpoint", "read_sidecar", "sidecar_path",
]  # fmt: skip


def export_targets(format_name: str, quantization: str | None) -> list[tuple[ExportFormat, str]]:
    """(format, quantization) pairs for ``--format`` / ``--quantize``; checked before any work."""
    if format_name == "all":
        if quantization is not None:
            raise InvalidOptionError(
                f"--format all exports every quantization; received --quantize {quantization}",
                hint="drop --quantize, or name one --format",
            )
        return [(f, q) for f in export_formats() for q in f.quantizations]
    fmt = get_format(format_name)
    return [(fmt, resolve_quantization(fmt, quantization))]


def default_out_dir(model_name: str) -> Path:
    return Path("exports") / model_name


def export_model(
    model_path: Path,
    format_name: str,
    options: ExportOptions | None = None,
    out_dir: Path | None = None,
    on_start: Callable[[ExportFormat, str], None] | None = None,
    on_done: Callable[[Artifact], None] | None = None,
) -> list[Artifact]:
    """Export ``model_path`` to every target of ``format_name``.

    A single format raises its error; ``all`` records a failed row and continues.
    """
    options = options or ExportOptions()
    targets = export_targets(format_name, options.quantization)
    artifacts: list[Artifact] = []
    with ExportSource(Path(model_path)) as source:
        source.model  # load (and validate) once, before any format starts
        out = Path(out_dir) if out_dir else default_out_dir(source.model_name)
        for fmt, quantization in targets:
            if on_start:
                on_start(fmt, quantization)
            opts = ExportOptions(**{**vars(options), "quantization": quantization})
            try:
                artifact = run_export(fmt, source, out, opts)
            except CifarDeployError as exc:
                if len(targets) == 1:
                    raise
                artifact = Artifact(format=fmt.name, quantization=quantization, path=None,
                                    sidecar=None, size_bytes=0, seconds=0.0, status="failed",
                                    error=exc.message)  # fmt: skip
                log.debug("%s (%s) failed: %s", fmt.name, quantization, exc.message)
            artifacts.append(artifact)
            if on_done:
                on_done(artifact)
    return artifacts
