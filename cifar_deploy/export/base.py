"""The export contract: one table of formats, one options record, one wrapper.

Every format function has the same signature, ``fn(source, staging_dir, options) -> Produced``,
and writes only inside ``staging_dir``. :func:`run_export` does everything else once: option
checks, timing, the non-empty check, the metadata sidecar, the atomic move into place, and turning
any failure (Ctrl-C included) into one :class:`ExportError` that names the format, with nothing
left behind.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ArtifactExistsError, CifarDeployError, ExportError, InvalidOptionError
from ..errors import one_line, unknown_name
from .metadata import (
    Metadata,
    TensorSpec,
    file_record,
    library_versions,
    now_iso,
    sidecar_path,
)
from .source import ExportSource

QUANTIZATIONS = ("none", "float16", "dynamic", "int8")
IO_TYPES = ("uint8", "int8", "float32")


@dataclass
class ExportOptions:
    quantization: str | None = None  # None: the format's default
    io_type: str = "uint8"  # TFLite int8: input dtype (camera pixels go in untouched as uint8)
    calibration_samples: int = 500  # training images for int8 calibration
    seed: int = 42  # calibration sample seed
    data_dir: str | None = None
    opset: int = 18  # ONNX opset
    force: bool = False  # overwrite existing artifacts
    max_batch_size: int = 64  # Triton: largest dynamic batch
    calibration_images: object = None  # uint8 NHWC array; None: drawn from the training split


@dataclass
class Produced:
    """What a format function made inside the staging directory."""

    path: Path  # file or directory, inside the staging directory
    input: TensorSpec
    output: TensorSpec
    calibration: dict | None = None
    extra: dict = field(default_factory=dict)


@dataclass
class Artifact:
    """The record of one export: where, what, how big, how long, and its metadata."""

    format: str
    quantization: str
    path: Path | None
    sidecar: Path | None
    size_bytes: int
    seconds: float
    status: str  # "ok" or "failed"
    error: str | None = None
    metadata: Metadata | None = None

    def to_dict(self) -> dict:
        return {
            "format": self.format,
            "quantization": self.quantization,
            "path": str(self.path) if self.path else None,
            "sidecar": str(self.sidecar) if self.sidecar else None,
            "size_bytes": self.size_bytes,
            "seconds": round(self.seconds, 3),
            "status": self.status,
            "error": self.error,
            "metadata": self.metadata.to_dict() if self.metadata else None,
        }


@dataclass(frozen=True)
class ExportFormat:
    name: str
    quantizations: tuple[str, ...]
    default_quantization: str
    target: Callable[[str, str], str]  # (model_name, quantization) -> artifact name in out_dir
    fn: Callable[[ExportSource, Path, ExportOptions, str], Produced]
    description: str


_FORMATS: dict[str, ExportFormat] = {}


def register_format(fmt: ExportFormat) -> ExportFormat:
    _FORMATS[fmt.name] = fmt
    return fmt


def export_formats() -> list[ExportFormat]:
    """The format table (as Ultralytics' ``export_formats()``): drives CLI choices and checks."""
    from . import savedmodel, tflite, onnx_format, triton  # noqa: F401,I001  (table order)

    return list(_FORMATS.values())


def get_format(name: str) -> ExportFormat:
    formats = {f.name: f for f in export_formats()}
    if name not in formats:
        raise unknown_name("format", name, list(formats) + ["all"])
    return formats[name]


def resolve_quantization(fmt: ExportFormat, quantization: str | None) -> str:
    q = quantization or fmt.default_quantization
    if q not in fmt.quantizations:
        raise InvalidOptionError(
            f"--format {fmt.name} does not support --quantize {q}; "
            f"expected one of: {', '.join(fmt.quantizations)}"
        )
    return q


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def run_export(
    fmt: ExportFormat, source: ExportSource, out_dir: Path, options: ExportOptions
) -> Artifact:
    """Export one format/quantization atomically; raises typed errors, leaves nothing partial."""
    quantization = resolve_quantization(fmt, options.quantization)
    out_dir = Path(out_dir)
    target = out_dir / fmt.target(source.model_name, quantization)
    sidecar = sidecar_path(target)
    if (target.exists() or sidecar.exists()) and not options.force:
        raise ArtifactExistsError(
            f"{target} exists; not overwriting it", hint="pass --force to replace it"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=out_dir))
    started = time.perf_counter()
    placed = False
    try:
        produced = fmt.fn(source, staging, options, quantization)
        if not produced.path.exists() or file_record(produced.path).size_bytes == 0:
            raise ExportError(f"{fmt.name} ({quantization}): the converter wrote nothing")
        seconds = time.perf_counter() - started
        metadata = Metadata(
            model_name=source.model_name,
            format=fmt.name,
            quantization=quantization,
            input=produced.input,
            output=produced.output,
            artifact=file_record(produced.path, relative_to=staging),
            source=source.record,
            calibration=produced.calibration,
            export_seconds=round(seconds, 3),
            versions=library_versions(),
            created_at=now_iso(),
            extra=produced.extra,
        )
        metadata.artifact.path = target.name
        staged_sidecar = staging / sidecar.name
        staged_sidecar.write_text(json.dumps(metadata.to_dict(), indent=2) + "\n")
        # Into place: the old artifact and sidecar go first, then the artifact, then its sidecar,
        # each by rename, so no reader ever sees a half-written file or a sidecar alone.
        _remove(sidecar)
        _remove(target)
        produced.path.rename(target)
        placed = True
        staged_sidecar.rename(sidecar)
        placed = False
    except BaseException as exc:
        if placed:  # interrupted between the two renames: take the artifact back out
            _remove(target)
        if isinstance(exc, (CifarDeployError, KeyboardInterrupt, SystemExit)):
            raise
        reason = one_line(exc, limit=300)
        raise ExportError(f"{fmt.name} ({quantization}) export failed: {reason}") from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return Artifact(
        format=fmt.name,
        quantization=quantization,
        path=target,
        sidecar=sidecar,
        size_bytes=metadata.artifact.size_bytes,
        seconds=seconds,
        status="ok",
        metadata=metadata,
    )


def float_input() -> TensorSpec:
    return TensorSpec(name="images", shape=[None, 32, 32, 3], dtype="float32")


def prob_output(dtype: str = "float32") -> TensorSpec:
    return TensorSpec(name="probabilities", shape=[None, 10], dtype=dtype)
