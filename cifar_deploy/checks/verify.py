"""``cifar-deploy verify``: does every exported artifact behave like its Keras model on real images?

For each artifact and the reference, on the test split: top-1 accuracy, its difference from the
reference, agreement (share of identical top-1 predictions), max and mean absolute probability
difference, the worst per-class accuracy difference, and expected calibration error (15 bins).
Tolerances come from one table keyed by quantization, each value overridable.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import reference as reference_cache
from ..data import fit_dataset, load_dataset, stratified_indices
from ..errors import InvalidOptionError, one_line
from ..runtime.artifacts import (
    collect_artifacts,
    declare,
    load_metadata,
    reference_metadata,
    resolve_reference,
)
from ..runtime.predictors import load_predictor
from ..tta import check_tta, with_tta
from .consumers import get_consumer

ECE_BINS = 15


@dataclass(frozen=True)
class Tolerance:
    """What an artifact must meet; None means the check does not apply."""

    max_abs_diff: float | None = None  # largest |p_artifact - p_reference| over all outputs
    min_agreement: float | None = None  # share of test images with the same top-1 class
    max_accuracy_drop: float | None = None  # accuracy points (0..100) below the reference


# Keyed by quantization: float32 artifacts compute the same function; float16 keeps ~3 decimal
# digits; 8-bit weights (and activations) are judged on accuracy only.
TOLERANCES: dict[str, Tolerance] = {
    "none": Tolerance(max_abs_diff=1e-4, min_agreement=0.999),
    "float16": Tolerance(max_abs_diff=5e-3),
    "dynamic": Tolerance(max_accuracy_drop=1.0),
    "int8": Tolerance(max_accuracy_drop=1.0),
}


def tolerance_for(quantization: str, overrides: dict | None = None) -> Tolerance:
    if quantization not in TOLERANCES:
        raise InvalidOptionError(
            f"no tolerance for quantization {quantization!r}; expected one of: "
            f"{', '.join(TOLERANCES)}"
        )
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    return dataclasses.replace(TOLERANCES[quantization], **given)


def expected_calibration_error(
    probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS
) -> float:
    """Mean |accuracy - confidence| over equal-width confidence bins, weighted by bin size."""
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        in_bin = (confidence > lo) & (confidence <= hi)
        if in_bin.any():
            ece += in_bin.mean() * abs(correct[in_bin].mean() - confidence[in_bin].mean())
    return float(ece)


def per_class_accuracy(pred: np.ndarray, labels: np.ndarray, classes: int = 10) -> np.ndarray:
    return np.array(
        [(pred[labels == c] == c).mean() if (labels == c).any() else np.nan for c in range(classes)]
    )


@dataclass
class ParityRow:
    name: str  # artifact file name (or "reference")
    path: str
    format: str
    quantization: str
    runtime: str
    status: str  # reference, pass, fail, error
    accuracy: float | None = None  # 0..1
    accuracy_diff: float | None = None  # points (0..100) relative to the reference
    agreement: float | None = None  # 0..1
    max_abs_diff: float | None = None
    mean_abs_diff: float | None = None
    worst_class_diff: float | None = None  # points; the most negative per-class difference
    ece: float | None = None
    samples: int = 0
    tta: str = "none"  # test-time augmentation baked into the artifact
    accuracy_tta: float | None = None  # 0..1, with mirror TTA applied at run time (--tta flip)
    seconds: float | None = None  # wall time of this row's predictions on the split
    reasons: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def compare(probs: np.ndarray, ref: np.ndarray, labels: np.ndarray) -> dict:
    """Every parity figure for one artifact's probabilities against the reference's."""
    pred, ref_pred = probs.argmax(1), ref.argmax(1)
    diff = np.abs(probs.astype(np.float64) - ref.astype(np.float64))
    acc, ref_acc = float((pred == labels).mean()), float((ref_pred == labels).mean())
    classes = probs.shape[1]
    class_diff = per_class_accuracy(pred, labels, classes) - per_class_accuracy(
        ref_pred, labels, classes
    )
    return {
        "accuracy": acc,
        "accuracy_diff": 100.0 * (acc - ref_acc),
        "agreement": float((pred == ref_pred).mean()),
        "max_abs_diff": float(diff.max()),
        "mean_abs_diff": float(diff.mean()),
        "worst_class_diff": float(100.0 * np.nanmin(class_diff)),
        "ece": expected_calibration_error(probs, labels),
    }


def judge(figures: dict, tolerance: Tolerance) -> list[str]:
    """The reasons an artifact fails its tolerance (empty: it passes)."""
    reasons = []
    if tolerance.max_abs_diff is not None and figures["max_abs_diff"] > tolerance.max_abs_diff:
        reasons.append(f"max abs diff {figures['max_abs_diff']:.2e} > {tolerance.max_abs_diff:g}")
    if tolerance.min_agreement is not None and figures["agreement"] < tolerance.min_agreement:
        reasons.append(f"agreement {figures['agreement']:.2%} < {tolerance.min_agreement:.2%}")
    drop = -figures["accuracy_diff"]
    if tolerance.max_accuracy_drop is not None and drop > tolerance.max_accuracy_drop:
        reasons.append(f"accuracy drop {drop:.2f} points > {tolerance.max_accuracy_drop:g}")
    return reasons


def _load_all(
    artifacts: Sequence[Path], reference: Path | None, device: str, threads, declared=None
):
    """(reference predictor, {artifact path: predictor}): every file loaded before any
    evaluation, so a corrupt one is bad input, not a failed row. ``declared`` (a
    :class:`~cifar_deploy.contract.Declaration`) applies to the Keras models."""
    paths = collect_artifacts(artifacts)
    metas = {p: load_metadata(p) for p in paths}  # raises on missing files or hash mismatches
    for meta in metas.values():
        if meta.format == "keras":
            declare(meta, declared)
    models = {m.model_name for m in metas.values() if m.from_sidecar}
    if len(models) > 1:
        raise InvalidOptionError(
            f"artifacts of different models in one call: {', '.join(sorted(models))}; "
            "expected one model's artifacts"
        )
    reference = resolve_reference(metas, reference)
    if reference is None:
        raise InvalidOptionError(
            "cannot tell the reference model from the sidecars; pass --reference PATH"
        )
    predictors = {
        p: load_predictor(p, device=device, threads=threads, metadata=metas[p]) for p in paths
    }
    ref_meta = reference_metadata(reference, metas, declared)
    ref = load_predictor(reference, device="cpu", metadata=ref_meta)
    signatures = {p.signature for p in [ref, *predictors.values()]}
    if len(signatures) > 1:
        shown = ", ".join(sorted(s.describe() for s in signatures))
        raise InvalidOptionError(
            f"the reference and the artifacts take different inputs or classes ({shown}); "
            "expected one model's artifacts"
        )
    return ref, predictors


def load_evaluation_data(data_dir, signature, data=None):
    """The data set at the model's size; its class count must be the model's."""
    size = (signature.height, signature.width)
    data = data if data is not None else load_dataset(data_dir, size=size)
    if len(data.class_names) != signature.classes:
        raise InvalidOptionError(
            f"the data at {data.source} has {len(data.class_names)} classes, but the model "
            f"outputs {signature.classes}; expected data with the model's classes",
            hint="pass --data-dir with the model's own data (CIFAR-100, an image folder)",
        )
    return fit_dataset(data, size)


def evaluation_split(data, samples: int | None, seed: int):
    """(images, labels, indices) of the test split, or of a seeded class-stratified sample of
    it; ``indices`` is None for the whole split."""
    x, y = data.x_test, data.y_test
    if samples is None:
        return x, y, None
    if samples < 10:
        raise InvalidOptionError(f"--samples must be at least 10, received {samples}")
    idx = stratified_indices(y, min(samples, len(y)), seed)
    return x[idx], y[idx], idx


def _cached_reference(ref_predictor, data, idx) -> dict[str, np.ndarray]:
    """The reference's probabilities that training kept (TTA mode -> probabilities of the
    evaluated images), when they belong to this very model file and test split, and the
    artifacts declare no preprocessing or softmax around it (training keeps the bare model's)."""
    meta = ref_predictor.metadata
    if not meta.declared_preprocess.is_identity or meta.added_softmax:
        return {}
    cached = reference_cache.load(ref_predictor.path, data.x_test, data.y_test)
    return {mode: p if idx is None else p[idx] for mode, p in cached.items()}


def _passes(predictors: dict, tta: str, consumers: Sequence, cached: dict) -> int:
    """How many evaluation passes over the split a verify run makes (for its progress)."""
    ref = int("none" not in cached) + int(tta != "none" and tta not in cached)
    per_artifact = 1 + int(tta != "none")
    usable = sum(c.accepts(p.metadata) is None for p in predictors.values() for c in consumers)
    return ref + per_artifact * len(predictors) + usable


def _blank_row(predictor, runtime: str, samples: int) -> ParityRow:
    """An artifact's row before evaluation: who runs it, and "error" until it has run."""
    meta = predictor.metadata
    return ParityRow(
        name=predictor.path.name,
        path=str(predictor.path),
        format=meta.format,
        quantization=meta.quantization,
        runtime=runtime,
        status="error",
        samples=samples,
    )


def _compared(row: ParityRow, probs: np.ndarray, ref: np.ndarray, labels) -> dict:
    figures = compare(probs, ref, labels)
    for key, value in figures.items():
        setattr(row, key, value)
    return figures


def _accuracy(probs: np.ndarray, labels: np.ndarray) -> float:
    return float((probs.argmax(1) == labels).mean())


def _row(predictor, images, labels, ref, overrides) -> tuple[ParityRow, np.ndarray | None]:
    """One artifact's row (its figures against the reference, and the verdict) and its
    probabilities (None when it failed to run)."""
    meta = predictor.metadata
    row = _blank_row(predictor, predictor.provider, len(labels))
    probs = None
    started = time.perf_counter()
    try:
        probs = predictor.predict(images)
        row.seconds = time.perf_counter() - started
        figures = _compared(row, probs, ref, labels)
        row.reasons = judge(figures, tolerance_for(meta.quantization, overrides))
        row.status = "fail" if row.reasons else "pass"
    except Exception as exc:  # a runtime failing mid-evaluation: an error row, not an abort
        row.reasons = [one_line(exc, with_type=True)]
    return row, probs


def consumer_row(consumer_cls, predictor, images, labels, ours: np.ndarray) -> ParityRow:
    """The library an app embeds against our own runtime on the same artifact: the same top-1
    on every image, and category names equal to the artifact's class names."""
    row = _blank_row(predictor, f"{consumer_cls.name} {consumer_cls.version()}", len(labels))
    try:
        started = time.perf_counter()
        consumer = consumer_cls(predictor.path, predictor.signature.classes)
        try:
            out = consumer.run(images)
            row.seconds = time.perf_counter() - started
        finally:
            consumer.close()
        figures = _compared(row, out.probabilities, ours, labels)
        disagree = int(round((1.0 - figures["agreement"]) * len(labels)))
        if disagree:
            row.reasons.append(f"top-1 differs from {predictor.provider} on {disagree} images")
        if out.category_names != predictor.class_names:
            row.reasons.append(f"category names {out.category_names} are not the class names")
        row.status = "fail" if row.reasons else "pass"
    except Exception as exc:  # the library refused the model: a failed row that says why
        row.status, row.reasons = "fail", [f"{consumer_cls.name} cannot load it: {one_line(exc)}"]
    return row


def verify(
    artifacts: Sequence[Path],
    reference: Path | None = None,
    data_dir: Path | None = None,
    samples: int | None = None,
    device: str = "cpu",
    threads: int | None = None,
    overrides: dict | None = None,
    seed: int = 42,
    data=None,
    on_progress: Callable[[str, int, int], None] | None = None,
    consumers: Sequence[str] = (),
    tta: str = "none",
    declared=None,
    keep: dict | None = None,
) -> list[ParityRow]:
    """Evaluate the reference and every artifact on the test split; one row each, plus one row
    per ``consumers`` library (e.g. "mediapipe") and artifact it can load, compared with our
    own runtime on the same artifact. An artifact exported with ``--tta flip`` is compared with
    the reference evaluated with the same augmentation; ``tta="flip"`` also reports every
    artifact's (and the reference's) accuracy with mirror TTA applied at run time.

    ``on_progress(name, done, total)`` is called before each pass over the split (``done`` of
    ``total`` passes made so far), and once with ``done == total`` at the end. The reference's
    probabilities that training kept beside the model are used when they match it.

    ``keep``, when given, receives the arrays behind the rows: ``labels``, ``reference`` and
    each artifact's probabilities under its file name (the report's pictures come from them).

    Bad inputs (corrupt artifacts, hash mismatches, mixed models, a non-Keras reference, an
    unknown consumer) raise before any evaluation; a runtime failure during evaluation becomes
    an ``error`` row.
    """
    consumer_classes = [get_consumer(name) for name in consumers]
    check_tta(tta)
    ref_predictor, predictors = _load_all(artifacts, reference, device, threads, declared)
    data = load_evaluation_data(data_dir, ref_predictor.signature, data)
    x, y, idx = evaluation_split(data, samples, seed)
    refs = _cached_reference(ref_predictor, data, idx)  # TTA mode -> reference probabilities
    total, done = _passes(predictors, tta, consumer_classes, refs), 0

    def progress(name: str, passes: int = 1) -> None:
        nonlocal done
        if on_progress:
            on_progress(name, done, total)
        done += passes

    def reference(mode: str) -> np.ndarray:
        if mode not in refs:
            refs[mode] = with_tta(ref_predictor.predict, mode)(x)
        return refs[mode]

    cached = "none" in refs
    if not cached:
        progress("reference", 1 + int(tta != "none"))
    started = time.perf_counter()
    ref = reference("none")
    rows = [
        ParityRow(
            name="reference",
            path=str(ref_predictor.path),
            format="keras",
            quantization="none",
            runtime=ref_predictor.provider + (" (kept by training)" if cached else ""),
            status="reference",
            accuracy=_accuracy(ref, y),
            ece=expected_calibration_error(ref, y),
            samples=len(y),
            accuracy_tta=_accuracy(reference(tta), y) if tta != "none" else None,
            seconds=time.perf_counter() - started,
        )
    ]
    if keep is not None:
        keep.update(labels=y, reference=ref)
    for path, predictor in predictors.items():
        baked = predictor.metadata.tta
        progress(path.name, 1 + int(tta != "none"))
        row, probs = _row(predictor, x, y, reference(baked), overrides)
        if keep is not None and probs is not None and baked == "none":
            keep[path.name] = probs
        row.tta = baked
        if tta != "none" and baked == "none" and probs is not None:
            row.accuracy_tta = _accuracy(with_tta(predictor.predict, tta)(x), y)
        rows.append(row)
        for consumer in consumer_classes:
            if probs is not None and consumer.accepts(predictor.metadata) is None:
                progress(f"{path.name} ({consumer.name})")
                rows.append(consumer_row(consumer, predictor, x, y, probs))
    if on_progress:
        on_progress("done", total, total)
    return rows
