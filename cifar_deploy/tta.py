"""Test-time augmentation: the mean of the probabilities of an image and of its mirror image.

One definition for every place that applies it: ``verify --tta flip`` (on any runtime's
predictions), the training report (the best checkpoint with and without), and ``export --tta
flip``, which bakes it into the exported graph (the model runs on the batch and on its horizontal
mirror, and the graph averages), so every format serves it and the sidecar records it.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .errors import InvalidOptionError

TTA_MODES = ("none", "flip")
WIDTH_AXIS = 2  # NHWC: a horizontal mirror reverses the width axis


def check_tta(mode: str) -> str:
    if mode not in TTA_MODES:
        raise InvalidOptionError(f"--tta must be one of: {', '.join(TTA_MODES)}; received {mode!r}")
    return mode


def mirrored(images: np.ndarray) -> np.ndarray:
    """The horizontal mirror of a batch of NHWC images."""
    return np.ascontiguousarray(np.flip(images, axis=WIDTH_AXIS))


def with_tta(predict: Callable[[np.ndarray], np.ndarray], mode: str) -> Callable:
    """``predict`` with test-time augmentation ``mode`` applied around it."""
    if check_tta(mode) == "none":
        return predict
    return lambda images: (predict(images) + predict(mirrored(images))) / 2.0


def in_graph(model, images, mode: str):
    """``model(images)`` with ``mode`` inside a traced TensorFlow graph (for exports); ``model``
    is a Keras model or any callable that takes ``training``."""
    if check_tta(mode) == "none":
        return model(images, training=False)
    from . import _tf

    tf = _tf.tf()
    flipped = tf.reverse(images, axis=[WIDTH_AXIS])
    return (model(images, training=False) + model(flipped, training=False)) / 2.0
