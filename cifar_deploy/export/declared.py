"""What a model declares about its input and output, checked on real images before anything is
written.

A model a user brings was often trained on normalized pixels, and sometimes ends in logits.
Every artifact takes raw pixels and returns probabilities, so the declared preprocessing and an
added softmax go into the exported graph; a wrong declaration would be baked in silently. Here,
before any conversion:

- **outputs**: the model's outputs on a few images must be probabilities (every value in 0..1,
  rows summing to 1), unless ``--add-softmax`` is given; with it, outputs that already are
  probabilities are refused (a second softmax flattens them);
- **preprocessing** (when real images are at hand): the model scores a stratified sample under
  the declared preprocessing; when that is near chance, it scores the sample under every named
  mode and under CIFAR-10's well-known mean/std as well, and a candidate far above the declared
  one turns the export into a refusal that names the flags that work. An explicit
  ``--preprocess`` is the user's word: then the same finding is a warning;
- **class names**: ``--labels`` first, then the dataset's names when their count matches.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from ..contract import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    MODE_MEANING,
    PREPROCESS_MODES,
    Preprocess,
)
from ..data import load_dataset, stratified_indices
from ..errors import DataNotFoundError, InvalidModelError, InvalidOptionError

log = logging.getLogger(__name__)

CHECK_SAMPLES = 500  # training images scored per candidate (standard error ~2.2 points at 50%)
PROBE_IMAGES = 8  # random images for the output check when no data is at hand
NEAR_CHANCE = 2.5  # "near chance": below this many times the chance accuracy (1 / classes)
MARGIN = 0.15  # accuracy (0..1) by which a candidate must beat the declared preprocessing
CLOSE = 0.05  # candidates within this accuracy (0..1) of the best are named beside it
SUM_TOLERANCE = 0.01  # |row sum - 1| of probabilities a float32 softmax meets easily
BATCH = 100  # images per model call


@dataclass
class DeclaredCheck:
    """What the check found: the declared preprocessing's accuracy on the sample, and every
    candidate's when they were tried (flags -> accuracy 0..1)."""

    samples: int = 0
    data: str = ""
    declared: float | None = None
    candidates: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "samples": self.samples,
            "data": self.data,
            "declared_accuracy": self.declared,
            "candidates": self.candidates,
        }


def candidates() -> list[Preprocess]:
    """The preprocessings tried: every named mode, and x/255 with CIFAR-10's mean and std."""
    named = [Preprocess(mode) for mode in PREPROCESS_MODES]
    return [*named, Preprocess("unit", CIFAR10_MEAN, CIFAR10_STD)]


def _outputs(model, preprocess: Preprocess, images: np.ndarray) -> np.ndarray:
    """The model's outputs on ``images`` scaled by ``preprocess`` (eager calls: a few batches
    per candidate, where tracing a graph for each would cost more than it saves)."""
    parts = [
        np.asarray(model(preprocess(images[i : i + BATCH].astype(np.float32)), training=False))
        for i in range(0, len(images), BATCH)
    ]
    return np.concatenate(parts)


def _is_probabilities(outputs: np.ndarray) -> bool:
    sums = outputs.sum(axis=1)
    return bool(
        np.isfinite(outputs).all()
        and outputs.min() >= -1e-6
        and outputs.max() <= 1 + 1e-6
        and np.abs(sums - 1).max() <= SUM_TOLERANCE
    )


def check_outputs(source, outputs: np.ndarray) -> None:
    """Probabilities, or a logits head with ``--add-softmax``; anything else is refused."""
    where = source.path
    if not np.isfinite(outputs).all():
        raise InvalidModelError(f"{where}: outputs NaN or infinite values on real images")
    probabilities = _is_probabilities(outputs)
    if source.add_softmax and probabilities:
        raise InvalidOptionError(
            f"{where}: already outputs probabilities (values 0..1, rows summing to 1); "
            "--add-softmax would apply a second softmax",
            hint="drop --add-softmax",
        )
    if not source.add_softmax and not probabilities:
        sums = outputs.sum(axis=1)
        raise InvalidModelError(
            f"{where}: outputs are not probabilities (values {outputs.min():.3g}.."
            f"{outputs.max():.3g}, row sums {sums.min():.3g}..{sums.max():.3g}); every artifact "
            "returns probabilities",
            hint="a logits head? pass --add-softmax to end the exported graph in a softmax",
        )


def _sample(data, count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    idx = stratified_indices(data.y_train, min(count, len(data.y_train)), seed)
    return data.x_train[idx], data.y_train[idx]


def load_check_data(source, data_dir, explicit_data: bool):
    """The data set for the check at the model's size, or None (with a warning) when none is
    at hand. A data set whose class count differs from the model's is refused when it was
    named with ``--data-dir``, and passed over otherwise."""
    size = (source.signature.height, source.signature.width)
    try:
        data = load_dataset(data_dir, download=False, size=size)
    except DataNotFoundError:
        log.warning(
            "no images at hand (--data-dir, CIFAR10_DIR): %s's preprocessing was not checked",
            source.path,
        )
        return None
    classes = source.signature.classes
    if len(data.class_names) != classes:
        message = (
            f"the data at {data.source} has {len(data.class_names)} classes, but "
            f"{source.path} outputs {classes}"
        )
        if explicit_data:
            raise InvalidOptionError(
                f"{message}; expected data with the model's classes",
                hint="pass --data-dir with the model's own data (an image folder per class)",
            )
        log.warning("%s: its preprocessing was not checked", message)
        return None
    return data


def check_declared(source, data, explicit_preprocess: bool, seed: int = 42) -> DeclaredCheck:
    """Check the outputs (always) and the declared preprocessing (with ``data``); raises a
    one-line error for a model that would export wrong. Takes the dataset's class names when
    none were given and the counts match."""
    model, classes = source.model, source.signature.classes
    record = DeclaredCheck()
    if data is None:
        rng = np.random.default_rng(0)
        probe = rng.integers(0, 256, (PROBE_IMAGES, *source.signature.image_shape), np.uint8)
        check_outputs(source, _outputs(model, source.preprocess, probe))
        return record
    if not source.names_given:
        source.set_class_names(list(data.class_names), f"the data at {data.source}")
    images, labels = _sample(data, CHECK_SAMPLES, seed)
    record.samples, record.data = len(labels), data.source
    outputs = _outputs(model, source.preprocess, images)
    check_outputs(source, outputs)
    record.declared = float((outputs.argmax(1) == labels).mean())
    if record.declared >= NEAR_CHANCE / classes:
        return record
    for candidate in candidates():
        if candidate == source.preprocess:
            continue
        scores = _outputs(model, candidate, images).argmax(1)
        record.candidates[candidate.flags()] = float((scores == labels).mean())
    ranked = sorted(record.candidates.items(), key=lambda kv: -kv[1])
    best_flags, best = ranked[0]
    if best - record.declared < MARGIN:
        return record
    # Candidates this close to the best one are not told apart by the sample (ImageNet's mean
    # and std are near CIFAR-10's): each is named, best first.
    close = [(f, a) for f, a in ranked if best - a <= CLOSE][:3]
    declared = source.preprocess
    named = "raw pixels" if declared.is_identity else f"{declared.flags()}"
    works = ", ".join(f"{a:.0%} with {f}" for f, a in close)
    message = (
        f"{source.path}: scores {record.declared:.0%} on {named} and {works} ({record.samples} "
        f"training images from {data.source}; tried {', '.join(MODE_MEANING)} and CIFAR-10's "
        "mean/std: other per-channel statistics cannot be guessed)"
    )
    if explicit_preprocess:
        log.warning("%s; exporting with %s as declared", message, declared.flags())
        return record
    choice = best_flags if len(close) == 1 else "the one it was trained with"
    raise InvalidModelError(
        f"{message}; pass {choice}, or --preprocess raw to export anyway",
        hint="declare the preprocessing the model was trained with: it is baked into every "
        "artifact, which then takes raw pixels 0..255",
    )
