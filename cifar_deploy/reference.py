"""The reference model's test-split predictions, computed once.

Training evaluates its best checkpoint on the test split, with and without mirror TTA; it keeps
those probabilities next to the checkpoint (``best.keras`` -> ``best.predictions.npz``), keyed
by the checkpoint's sha256 and a digest of the test images and labels. ``verify`` reads them back
instead of running the Keras model again when both keys still match (on a 2-core CPU that pass
is the slowest of a verify run); anything stale or unreadable is ignored and recomputed.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from .export.metadata import sha256_of

BATCH = 256  # images per call, as the Keras predictor runs them


def cache_path(model_path: Path) -> Path:
    model_path = Path(model_path)
    return model_path.with_name(f"{model_path.stem}.predictions.npz")


def images_digest(images: np.ndarray, labels: np.ndarray) -> str:
    """sha256 over the images' and labels' shapes, dtypes and bytes."""
    digest = hashlib.sha256()
    for array in (np.ascontiguousarray(images), np.ascontiguousarray(labels)):
        digest.update(f"{array.shape}{array.dtype}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def compiled(model, image_shape: tuple[int, ...] | None = None):
    """``model(images, training=False)`` as one traced graph for any batch size: the same
    kernels as eager calls, without their per-op overhead (eager calls ran the test split 1.4x
    slower than fit's validation, which overran a budget's final evaluation by 12 s).
    ``image_shape``: one image's shape (default: the contract's 32x32 RGB)."""
    from . import _tf
    from .contract import INPUT_SHAPE

    tf = _tf.tf()
    spec = tf.TensorSpec([None, *(image_shape or INPUT_SHAPE)], tf.float32)
    return tf.function(lambda images: model(images, training=False), input_signature=[spec])


def keras_probabilities(model, images: np.ndarray, call=None) -> np.ndarray:
    """A Keras model's probabilities, ``BATCH`` images per call (as in verify); ``call``: the
    model's :func:`compiled` graph, made here when not given."""
    call = call if call is not None else compiled(model)
    parts = [
        np.asarray(call(images[i : i + BATCH].astype(np.float32)))
        for i in range(0, len(images), BATCH)
    ]
    return np.concatenate(parts)


def save(model_path: Path, images: np.ndarray, labels: np.ndarray, probs: dict) -> Path:
    """Keep ``probs`` (TTA mode -> probabilities of every image) for ``model_path``; atomic."""
    path = cache_path(model_path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}.npz")
    np.savez(
        tmp,
        model_sha256=np.array(sha256_of(Path(model_path))),
        images_sha256=np.array(images_digest(images, labels)),
        **{f"probs_{mode}": p.astype(np.float32) for mode, p in probs.items()},
    )
    os.replace(tmp, path)
    return path


def load(model_path: Path, images: np.ndarray, labels: np.ndarray) -> dict[str, np.ndarray]:
    """TTA mode -> cached probabilities, or {} when there is no cache for exactly this model
    file and these images."""
    path = cache_path(model_path)
    try:
        with np.load(path, allow_pickle=False) as cache:
            if str(cache["model_sha256"]) != sha256_of(Path(model_path)):
                return {}
            if str(cache["images_sha256"]) != images_digest(images, labels):
                return {}
            probs = {k.removeprefix("probs_"): cache[k] for k in cache.files if k[:6] == "probs_"}
    except (OSError, KeyError, ValueError):
        return {}
    if any(p.shape != (len(labels), p.shape[1]) for p in probs.values()):
        return {}
    return probs
