"""``airbench``: a fast small CIFAR-10 network after Keller Jordan's airbench94 (2024), built for
the --quick preset on slow CPUs.

A frozen 2x2 patch-whitening convolution (its filters are the eigenvectors of the training
patches' covariance, scaled to unit variance, with their negatives: 24 channels), then three
blocks of (Conv3x3 -> MaxPool -> BatchNorm -> ReLU -> Conv3x3 -> BatchNorm -> ReLU) with 64, 256
and 256 filters, global max pooling and a dense softmax head. About 1.97M parameters and 0.12G
multiply-accumulates per image: 0.6x those of ``cnn``, so a CPU trains it about 1.6x faster.
Pooling before the block's BatchNorm and activation runs them on a quarter of the pixels.
ReLU where airbench has GELU: Keras' exact GELU needs Erfc, which tf2onnx cannot convert at
opset 18, and ReLU fuses into int8 convolutions in every runtime.
"""

from __future__ import annotations

import numpy as np

from .. import _tf
from .layers import kernel_regularizer, probabilities, raw_pixel_input, standardize
from .recipes import Phase, Recipe
from .registry import ModelSpec, register_model

WIDTHS = (64, 256, 256)
WHITEN_KERNEL = 2
WHITEN_EPSILON = 5e-4  # added to the covariance eigenvalues (airbench's value)
# Keras momentum is the weight of the old moving statistics (airbench's PyTorch 0.6 -> 0.4): with
# ~70 steps an epoch, evaluation statistics follow the weights closely.
BN_MOMENTUM = 0.4
LOGIT_SCALE = 1 / 9  # airbench scales the head's input down: a cooler softmax early on


def build_airbench(
    num_classes: int = 10,
    widths: tuple[int, ...] = WIDTHS,
    weight_decay: float = 0.0,
    name: str = "airbench",
):
    keras = _tf.keras()
    reg = kernel_regularizer(weight_decay)
    inputs = raw_pixel_input()
    x = standardize(inputs, name)
    # Set from the training images by whiten_from_data before training; frozen.
    x = keras.layers.Conv2D(
        2 * 3 * WHITEN_KERNEL**2,
        WHITEN_KERNEL,
        padding="valid",
        trainable=False,
        name=f"{name}_whiten",
    )(x)
    x = keras.layers.Activation("relu", name=f"{name}_whiten_relu")(x)
    for b, filters in enumerate(widths, start=1):
        prefix = f"{name}_block{b}"
        for c in (1, 2):
            x = keras.layers.Conv2D(
                filters,
                3,
                padding="same",
                use_bias=False,
                kernel_regularizer=reg,
                name=f"{prefix}_conv{c}",
            )(x)
            if c == 1:
                x = keras.layers.MaxPooling2D(name=f"{prefix}_pool")(x)
            x = keras.layers.BatchNormalization(
                momentum=BN_MOMENTUM, scale=False, name=f"{prefix}_bn{c}"
            )(x)
            x = keras.layers.Activation("relu", name=f"{prefix}_relu{c}")(x)
    x = keras.layers.GlobalMaxPooling2D(name=f"{name}_gmp")(x)
    x = keras.layers.Rescaling(LOGIT_SCALE, name=f"{name}_scale")(x)
    return keras.Model(inputs, probabilities(x, num_classes, name), name=name)


def whitening_filters(images: np.ndarray, kernel: int = WHITEN_KERNEL) -> np.ndarray:
    """Conv2D kernel (k, k, 3, 2 * 3k^2) that whitens k x k patches of standardized ``images``
    (uint8 or float NHWC, 0..255): eigenvectors of the patch covariance over sqrt(eigenvalue +
    eps), and their negatives (the ReLU after it keeps both signs)."""
    from .layers import CIFAR_MEAN, CIFAR_STD

    x = (images.astype(np.float64) - np.array(CIFAR_MEAN)) / np.array(CIFAR_STD)
    n, h, w, ch = x.shape
    patches = np.stack(
        [
            x[:, i : h - kernel + 1 + i, j : w - kernel + 1 + j, :]
            for i in range(kernel)
            for j in range(kernel)
        ],
        axis=3,
    )  # (n, h', w', k*k, c): the (i, j) patch offset, then the channel, as a Conv2D kernel
    patches = patches.reshape(-1, kernel * kernel * ch)
    patches = patches - patches.mean(axis=0)
    covariance = patches.T @ patches / len(patches)
    eigenvalues, eigenvectors = np.linalg.eigh(covariance)
    filters = eigenvectors / np.sqrt(eigenvalues + WHITEN_EPSILON)  # columns: one filter each
    filters = np.concatenate([filters, -filters], axis=1)
    return filters.reshape(kernel, kernel, ch, -1).astype(np.float32)


def whiten_from_data(model, images: np.ndarray, sample: int = 5000) -> None:
    """Set the frozen whitening layer of an ``airbench`` model from (a seeded sample of) the
    training images; the layer's bias centres the patches."""
    from .layers import CIFAR_MEAN, CIFAR_STD

    layer = next(la for la in model.layers if la.name.endswith("_whiten"))
    if len(images) > sample:
        images = images[np.random.default_rng(0).permutation(len(images))[:sample]]
    kernel = whitening_filters(images)
    # The standardized images' mean pixel: standardization is affine, so standardize the mean
    # instead of a float64 copy of every image.
    mean = (images.mean(axis=(0, 1, 2), dtype=np.float64) - np.array(CIFAR_MEAN)) / np.array(
        CIFAR_STD
    )
    mean_patch = np.broadcast_to(mean, (WHITEN_KERNEL, WHITEN_KERNEL, 3))
    bias = -np.tensordot(mean_patch, kernel.astype(np.float64), axes=3)
    layer.set_weights([kernel, bias.astype(np.float32)])


RECIPE = Recipe(
    phases=(
        Phase(
            "train",
            epochs=40,
            optimizer="sgd",
            lr=0.2,
            warmup_epochs=2,
            final_lr=0.0,
            momentum=0.85,
        ),
    ),
    batch_size=128,
    label_smoothing=0.2,
    crop_padding=2,
    flip=True,
    weight_decay=5e-4,
)

# The --quick preset: what is left of a 10-minute wall-time budget after start-up on any machine
# (the rate follows elapsed time and reaches zero when the budget ends).
QUICK_RECIPE = RECIPE.with_overrides(epochs=16, warmup_epochs=1, mixed_precision="auto")
QUICK_TIME_BUDGET = 600.0

register_model(
    ModelSpec(
        name="airbench",
        builder=build_airbench,
        recipe=RECIPE,
        description="airbench94-style net: frozen patch whitening, 64-256-256 blocks, ReLU",
        quick_recipe=QUICK_RECIPE,
        quick_time_budget=QUICK_TIME_BUDGET,
        fit_to_data=whiten_from_data,
    )
)
