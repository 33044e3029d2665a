"""Analytic FLOP count of a Keras model's forward pass (one image), for efficiency figures.

Counts multiply-adds as 2 FLOPs in convolutions (standard, depthwise) and dense layers, the
layers that dominate every model here; element-wise layers are left out. Nested models (the
MobileNetV2 backbone) are counted through their layers.
"""

from __future__ import annotations

from .. import _tf


def _shape(tensor_or_shape):
    shape = getattr(tensor_or_shape, "shape", tensor_or_shape)
    return tuple(shape)


def layer_flops(layer) -> int:
    keras = _tf.keras()
    if isinstance(layer, keras.Model):
        return sum(layer_flops(inner) for inner in layer.layers)
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        _, h, w, c = _shape(layer.output)
        kh, kw = layer.kernel_size
        return 2 * h * w * c * kh * kw
    if isinstance(layer, keras.layers.Conv2D):
        _, h, w, c_out = _shape(layer.output)
        kh, kw = layer.kernel_size
        c_in = _shape(layer.input)[-1]
        return 2 * h * w * c_out * kh * kw * c_in // layer.groups
    if isinstance(layer, keras.layers.Dense):
        return 2 * _shape(layer.input)[-1] * layer.units
    return 0


def model_flops(model) -> int:
    """Forward-pass FLOPs for one image."""
    return int(sum(layer_flops(layer) for layer in model.layers))
