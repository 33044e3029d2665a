"""The export contract: one table of formats, one options record, one wrapper.

Every format function has the same signature, ``fn(source, staging_dir, options, quantization)
-> Produced``, and writes only inside ``staging_dir``. A format declares the options it reads
(:class:`FormatOption`), so :func:`check_options` validates every option once, before any
conversion. :func:`run_export` does everything else once: timing, the non-empty check, the
metadata sidecar, the atomic move into place, and turning any failure (Ctrl-C included) into one
:class:`ExportError` that names the format, with nothing left behind.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .. import interrupts
from ..contract import Preprocess, library_versions, preprocessing_text
from ..errors import CifarDeployError, ExportError, InvalidOptionError, one_line, unknown_name
from ..tta import TTA_MODES
from .metadata import Metadata, TensorSpec, file_record, now_iso, sidecar_path
from .quantization import measured_quantization
from .source import ExportSource

IO_TYPES = ("uint8", "int8", "float32")  # TFLite int8: the input tensor's dtype
DEFAULT_IO_TYPE = "uint8"  # camera pixels go in untouched
DEFAULT_OPSET = 18
MIN_OPSET, MAX_OPSET = 13, 18  # what tf2onnx 1.16+ converts to
DEFAULT_MAX_BATCH_SIZE = 64  # Triton: largest dynamic batch
DEFAULT_CALIBRATION_SAMPLES = 500  # training images for int8 calibration


@dataclass
class ExportOptions:
    """What an export may be told. ``None`` means "the format's default"; an option a user set
    (not None) must apply to at least one target (:func:`check_options`)."""

    quantization: str | None = None  # None: the format's default
    io_type: str | None = None  # TFLite int8 input dtype (default uint8)
    calibration_samples: int | None = None  # int8: training images (default 500)
    seed: int = 42  # calibration sample seed
    data_dir: Path | None = None  # CIFAR-10 for calibration
    opset: int | None = None  # ONNX opset (default 18)
    force: bool = False  # overwrite existing artifacts
    max_batch_size: int | None = None  # Triton: largest dynamic batch (default 64)
    static_batch: int | None = None  # TFLite: a fixed batch size (Edge TPU, NPU compilers)
    tta: str | None = None  # "flip": mirror test-time augmentation in the graph (default none)
    calibration_images: object = None  # uint8 NHWC array; None: drawn from the training split
    # What the model declares (bring your own model): its input scaling (None: raw pixels,
    # checked on real images), a softmax for a logits head, its class names (None: the data
    # set's, else the defaults for its class count).
    preprocess: Preprocess | None = None
    add_softmax: bool = False
    class_names: list[str] | None = None
    # The name artifacts take (<name>_<quantization>.<ext>); None: run.json's, else Keras's.
    name: str | None = None


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
    """The record of one export: where, what, how big, how long, and its metadata. A failed
    export is a row too: ``status`` "failed", ``error`` its one line, ``exception`` the error."""

    format: str
    quantization: str
    path: Path | None
    sidecar: Path | None
    size_bytes: int
    seconds: float
    status: str  # "ok" or "failed"
    error: str | None = None
    metadata: Metadata | None = None
    exception: CifarDeployError | None = field(default=None, repr=False, compare=False)

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


def _always(quantization: str) -> bool:
    return True


@dataclass(frozen=True)
class FormatOption:
    """An :class:`ExportOptions` field a format reads, for which quantizations, and its range."""

    field: str  # attribute of ExportOptions
    flag: str  # the CLI spelling, for messages
    applies: Callable[[str], bool] = _always  # quantization -> does the option mean anything
    expected: str = ""  # what a valid value is, for messages
    valid: Callable[[object], bool] = lambda value: True


@dataclass(frozen=True)
class ExportFormat:
    name: str
    quantizations: tuple[str, ...]
    default_quantization: str
    # (model_name, quantization[, options]) -> the artifact's name in out_dir
    target: Callable[..., str]
    fn: Callable[[ExportSource, Path, ExportOptions, str], Produced]
    description: str
    options: tuple[FormatOption, ...] = ()  # the options it reads beyond quantization


# Options every format reads (calibration: every int8 quantization).
COMMON_OPTIONS = (
    FormatOption(
        "calibration_samples",
        "--calibration-samples",
        applies=lambda q: q == "int8",
        expected="at least 1",
        valid=lambda v: v >= 1,
    ),
    FormatOption(
        "tta", "--tta", expected=f"one of: {', '.join(TTA_MODES)}", valid=TTA_MODES.__contains__
    ),
)

Target = tuple[ExportFormat, str]  # (format, quantization)

_FORMATS: dict[str, ExportFormat] = {}


def register_format(fmt: ExportFormat) -> ExportFormat:
    _FORMATS[fmt.name] = fmt
    return fmt


def export_formats() -> list[ExportFormat]:
    """The format table (as Ultralytics' ``export_formats()``): drives CLI choices and checks."""
    from . import savedmodel, tflite, onnx_format, triton, triton_python  # noqa: F401,I001

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


def export_targets(format_name: str, quantization: str | None = None) -> list[Target]:
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


def every_quantization(format_names: list[str]) -> list[Target]:
    """Every quantization of each named format ("all": every format)."""
    formats = export_formats() if "all" in format_names else [get_format(n) for n in format_names]
    return [(fmt, q) for fmt in formats for q in fmt.quantizations]


def _describe(targets: list[Target]) -> str:
    return ", ".join(f"{fmt.name} ({q})" for fmt, q in targets)


def check_options(targets: list[Target], options: ExportOptions) -> list[str]:
    """Validate every option that was set against the targets, before any conversion.

    Raises for a value out of range, or an option that none of the targets reads; returns notes
    for options that apply to some of the targets only (said once, up front)."""
    declared: dict[str, list[tuple[FormatOption, Target]]] = {}
    for target in targets:
        fmt, q = target
        for option in (*fmt.options, *COMMON_OPTIONS):
            declared.setdefault(option.field, []).append((option, target))
    every_field = {o.field: o for f in export_formats() for o in (*f.options, *COMMON_OPTIONS)}
    notes = []
    for name, option in every_field.items():
        value = getattr(options, name)
        if value is None:
            continue
        if not option.valid(value):
            raise InvalidOptionError(
                f"{option.flag} {value} is not supported; expected {option.expected}"
            )
        users = [t for o, t in declared.get(name, []) if o.applies(t[1])]
        if not users:
            raise InvalidOptionError(
                f"{option.flag} does not apply to {_describe(targets)}",
                hint=f"it applies to: {_applies_to(name)}",
            )
        if len(users) < len(targets):
            notes.append(f"{option.flag} {value} applies to {_describe(users)} only")
    return notes


def _applies_to(field_name: str) -> str:
    return ", ".join(
        f"{f.name} ({q})"
        for f in export_formats()
        for q in f.quantizations
        for o in (*f.options, *COMMON_OPTIONS)
        if o.field == field_name and o.applies(q)
    )


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def target_path(
    fmt: ExportFormat, model_name: str, quantization: str, out_dir: Path, options=None
) -> Path:
    """Where an artifact goes; a test-time-augmented one gets ``_tta`` in its name
    (``cnn_int8_tta.tflite``, ``savedmodel_tta``)."""
    name = fmt.target(model_name, quantization, options)
    if options is not None and options.tta not in (None, "none"):
        stem, dot, suffix = name.partition(".")
        name = f"{stem}_tta{dot}{suffix}"
    return Path(out_dir) / name


def _record(fmt, source, quantization, produced: Produced, staging: Path, seconds: float):
    """The sidecar record of what a format function produced."""
    return Metadata(
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
        tta=source.tta,
        class_names=list(source.class_names),
        preprocessing=preprocessing_text(source.signature),
        source_preprocess=source.preprocess.to_dict(),
        added_softmax=source.add_softmax,
    )


def run_export(
    fmt: ExportFormat,
    source: ExportSource,
    out_dir: Path,
    options: ExportOptions,
    quantization: str,
) -> Artifact:
    """Export one format/quantization atomically; raises typed errors, leaves nothing partial."""
    target = target_path(fmt, source.model_name, quantization, out_dir, options)
    sidecar = sidecar_path(target)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    interrupts.remove_stale(out_dir, f".{target.name}")  # left by a killed earlier export
    prefix = interrupts.scratch_prefix(f".{target.name}")
    staging = Path(tempfile.mkdtemp(prefix=prefix, dir=out_dir))
    started = time.perf_counter()
    placed = False
    try:
        produced = fmt.fn(source, staging, options, quantization)
        interrupts.check()  # a Ctrl-C or SIGTERM the converter's native code swallowed
        if not produced.path.exists() or file_record(produced.path).size_bytes == 0:
            raise ExportError(f"{fmt.name} ({quantization}): the converter wrote nothing")
        measured = measured_quantization(produced.path, fmt.name)
        if measured != quantization:
            why = (
                " (dynamic-range quantization leaves weight tensors under 1,024 values in "
                "float: this model has no larger one)"
                if (quantization, measured) == ("dynamic", "none")
                else ""
            )
            raise ExportError(
                f"{fmt.name} ({quantization}): the converter produced a {measured!r} model "
                f"(read back from its tensor types), not {quantization!r}{why}"
            )
        seconds = time.perf_counter() - started
        metadata = _record(fmt, source, quantization, produced, staging, seconds)
        metadata.artifact.path = target.name
        # The source as a path from the artifact's directory (runs/ and exports/ move together),
        # never the exporting machine's absolute path.
        relative = os.path.relpath(source.path.resolve(), Path(out_dir).resolve())
        metadata.source = dataclasses.replace(source.record, path=relative)
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
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise
        # A signal raised inside the converter's code may come out as some other error (tf2onnx
        # once turned one into "expected a message argument"): the signal wins, never a failure.
        interrupts.check()
        if isinstance(exc, CifarDeployError):
            raise
        reason = one_line(exc, limit=300)
        raise ExportError(f"{fmt.name} ({quantization}) export failed: {reason}") from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    size = metadata.artifact.size_bytes
    return Artifact(fmt.name, quantization, target, sidecar, size, seconds, "ok", metadata=metadata)


def failed_artifact(fmt: ExportFormat, quantization: str, exc: CifarDeployError) -> Artifact:
    return Artifact(
        format=fmt.name,
        quantization=quantization,
        path=None,
        sidecar=None,
        size_bytes=0,
        seconds=0.0,
        status="failed",
        error=exc.message,
        exception=exc,
    )
