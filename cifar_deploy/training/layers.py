"""Building blocks shared by the model families: the in-graph preprocessing contract."""

from __future__ import annotations

from .. import _tf
from ..contract import INPUT_NAME, INPUT_SHAPE

# Per-channel statistics of the CIFAR-10 training set, in the 0..255 pixel scale.
CIFAR_MEAN = (125.307, 122.950, 113.865)
CIFAR_STD = (62.993, 62.089, 66.705)


def raw_pixel_input(name: str = INPUT_NAME):
    """The model input: raw RGB pixels 0..255, float32, NHWC (N, 32, 32, 3)."""
    keras = _tf.keras()
    return keras.Input(shape=INPUT_SHAPE, dtype="float32", name=name)


def standardize(x, prefix: str):
    """Per-channel standardization with CIFAR-10 statistics, inside the graph.

    A ``Rescaling`` with per-channel scale and offset, (x - mean) / std = x / std - mean / std:
    its constants are built inside the traced graph, whereas ``keras.layers.Normalization``
    captures eager tensors that tf2onnx turns into extra, unfed graph inputs.
    """
    keras = _tf.keras()
    scale = [1.0 / s for s in CIFAR_STD]
    offset = [-m / s for m, s in zip(CIFAR_MEAN, CIFAR_STD)]
    return keras.layers.Rescaling(scale=scale, offset=offset, name=f"{prefix}_standardize")(x)


def kernel_regularizer(weight_decay: float):
    """L2 on kernels such that the gradient gains ``weight_decay * w`` (the papers' convention:
    Keras' ``L2(c)`` adds ``c * sum(w**2)``, whose gradient is ``2c * w``)."""
    keras = _tf.keras()
    return keras.regularizers.L2(weight_decay / 2) if weight_decay else None


def probabilities(x, num_classes: int, prefix: str):
    """The classification head's output: float32 probabilities even under mixed precision.

    The layer is named ``<prefix>_probabilities``; exports name the graph output
    ``contract.OUTPUT_NAME`` whatever the model's name."""
    keras = _tf.keras()
    return keras.layers.Dense(
        num_classes, activation="softmax", dtype="float32", name=f"{prefix}_probabilities"
    )(x)
