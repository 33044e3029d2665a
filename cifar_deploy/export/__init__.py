"""Export: SavedModel, TFLite (LiteRT) and ONNX (plus a Triton repository), one metadata contract.

``export_model`` turns a trained ``.keras`` file into one artifact per target, each with a JSON
sidecar (see :mod:`.metadata`); formats come from one table (:func:`export_formats`). Options are
checked against every target before any conversion; each target then becomes one row, failed or
not, and the caller decides what a failed row means.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

from ..errors import ArtifactExistsError, CifarDeployError
from .base import (
    Artifact,
    ExportFormat,
    ExportOptions,
    Target,
    check_options,
    every_quantization,
    export_formats,
    export_targets,
    failed_artifact,
    get_format,
    run_export,
    target_path,
)
from .declared import check_declared, load_check_data
from .metadata import Metadata, read_sidecar, sidecar_path
from .source import ExportSource, find_latest_checkpoint
from .tflite_metadata import LABELS_FILE, labels_text

log = logging.getLogger(__name__)

__all__ = [
    "Artifact",
    "ExportFormat",
    "ExportOptions",
    "Metadata",
    "check_options",
    "every_quantization",
    "export_formats",
    "export_model",
    "export_targets",
    "find_latest_checkpoint",
    "get_format",
    "read_sidecar",
    "sidecar_path",
]


def default_out_dir(model_name: str) -> Path:
    return Path("exports") / model_name


def _refuse_existing(targets: Sequence[Target], model_name: str, out: Path, options) -> None:
    existing = [
        path
        for fmt, q in targets
        if (path := target_path(fmt, model_name, q, out, options)).exists()
        or sidecar_path(path).exists()
    ]
    if existing:
        names = ", ".join(str(p) for p in existing)
        verb = "exists" if len(existing) == 1 else "exist"
        raise ArtifactExistsError(
            f"{names} {verb}; not overwriting", hint="pass --force to replace"
        )


def export_model(
    model_path: Path,
    targets: str | Sequence[Target],
    options: ExportOptions | None = None,
    out_dir: Path | None = None,
    on_start: Callable[[ExportFormat, str], None] | None = None,
    on_done: Callable[[Artifact], None] | None = None,
) -> list[Artifact]:
    """Export ``model_path`` to every target: a format name (with ``options.quantization``, or
    "all") or a list of (format, quantization) pairs. One row per target, in order.

    Bad input raises before any conversion: unknown formats, options out of range or applying
    to no target, an unloadable model, outputs that are not probabilities (without
    ``options.add_softmax``), a declared preprocessing that real images show is wrong (see
    :mod:`.declared`), class names that do not match the outputs, existing artifacts without
    ``force``. A target whose conversion fails becomes a "failed" row and the others go on;
    Ctrl-C stops everything.
    """
    options = options or ExportOptions()
    if isinstance(targets, str):
        targets = export_targets(targets, options.quantization)
    for note in check_options(list(targets), options):
        log.warning(note)
    if options.io_type == "int8":
        log.warning(
            "--io-type int8: MediaPipe Tasks, the TFLite Task Library and ML Kit load uint8 or "
            "float32 input only; this model is for toolchains that want int8 input"
        )
    artifacts: list[Artifact] = []
    source = ExportSource(
        Path(model_path),
        tta=options.tta or "none",
        preprocess=options.preprocess,
        add_softmax=options.add_softmax,
        name=options.name,
    )
    with source:
        _ = source.model  # load (and validate) once, before any format starts
        if options.class_names is not None:
            source.set_class_names(options.class_names, "--labels")
        out = Path(out_dir) if out_dir else default_out_dir(source.model_name)
        if not options.force:
            _refuse_existing(targets, source.model_name, out, options)
        data = load_check_data(source, options.data_dir, explicit_data=options.data_dir is not None)
        check_declared(source, data, options.preprocess is not None, seed=options.seed)
        for fmt, quantization in targets:
            if on_start:
                on_start(fmt, quantization)
            try:
                artifact = run_export(fmt, source, out, options, quantization)
            except CifarDeployError as exc:
                artifact = failed_artifact(fmt, quantization, exc)
                log.debug("%s (%s) failed: %s", fmt.name, quantization, exc.message)
            artifacts.append(artifact)
            if on_done:
                on_done(artifact)
    if any(a.status == "ok" for a in artifacts):
        write_labels(out, source.class_names)
    return artifacts


def write_labels(out_dir: Path, class_names: Sequence[str]) -> Path:
    """``labels.txt`` beside the artifacts: the class names, one per line, in output order (the
    file TFLite metadata names, for consumers that take labels separately)."""
    path = Path(out_dir) / LABELS_FILE
    tmp = path.with_name(f".{LABELS_FILE}.tmp")
    tmp.write_text(labels_text(list(class_names)))
    tmp.replace(path)
    return path
