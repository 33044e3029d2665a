"""The CNN baseline: three convolutional blocks (64 -> 128 -> 256 filters), about 1.8M parameters.

Each block is (Conv3x3 -> BatchNorm -> ReLU) x n, max-pooling and dropout; then global average
pooling and a dense head. Trained with SGD + Nesterov, warmup + cosine, label smoothing and
crop/flip augmentation.
"""

from __future__ import annotations

from .. import _tf
from .layers import kernel_regularizer, probabilities, raw_pixel_input, standardize
from .recipes import Phase, Recipe
from .registry import ModelSpec, register_model

BLOCKS = ((64, 2), (128, 2), (256, 3))  # (filters, convolutions) per block
# Moving-statistics momentum of 0.9 (PyTorch's 0.1): with 10k images an epoch is ~70 steps, and
# Keras' default 0.99 leaves evaluation statistics stale for the first epochs.
BN_MOMENTUM = 0.9


def build_cnn(
    num_classes: int = 10,
    blocks: tuple[tuple[int, int], ...] = BLOCKS,
    dropout: float = 0.2,  # after each block's pooling
    head_units: int = 256,  # width of the dense layer before the classifier
    head_dropout: float = 0.3,
    weight_decay: float = 0.0,
    name: str = "cnn",
):
    keras = _tf.keras()
    reg = kernel_regularizer(weight_decay)
    inputs = raw_pixel_input()
    x = standardize(inputs, name)
    for b, (filters, convs) in enumerate(blocks, start=1):
        prefix = f"{name}_block{b}"
        for c in range(1, convs + 1):
            x = keras.layers.Conv2D(
                filters,
                3,
                padding="same",
                use_bias=False,
                kernel_regularizer=reg,
                name=f"{prefix}_conv{c}",
            )(x)
            x = keras.layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{prefix}_bn{c}")(x)
            x = keras.layers.ReLU(name=f"{prefix}_relu{c}")(x)
        x = keras.layers.MaxPooling2D(name=f"{prefix}_pool")(x)
        x = keras.layers.Dropout(dropout, name=f"{prefix}_dropout")(x)
    x = keras.layers.GlobalAveragePooling2D(name=f"{name}_gap")(x)
    x = keras.layers.Dense(
        head_units, activation="relu", kernel_regularizer=reg, name=f"{name}_fc"
    )(x)
    x = keras.layers.Dropout(head_dropout, name=f"{name}_head_dropout")(x)
    return keras.Model(inputs, probabilities(x, num_classes, name), name=name)


RECIPE = Recipe(
    phases=(Phase("train", epochs=200, optimizer="sgd", lr=0.1, warmup_epochs=5, final_lr=0.0),),
    batch_size=128,
    label_smoothing=0.1,
    crop_padding=4,
    flip=True,
    weight_decay=5e-4,
)

# The --quick preset: a 10-minute wall-time budget on any machine (the schedule follows elapsed
# time; --epochs N trains N epochs instead), warmup over 1/16 of it. Mixed precision "auto" trains
# in bfloat16 on CPUs with AMX/AVX512-BF16 (1.5-2.7x faster there), float32 elsewhere.
QUICK_RECIPE = RECIPE.with_overrides(
    epochs=16, warmup_epochs=1, lr=0.05, mixed_precision="auto", batch_size=128
)
QUICK_TIME_BUDGET = 600.0

register_model(
    ModelSpec(
        name="cnn",
        builder=build_cnn,
        recipe=RECIPE,
        description="3-block CNN baseline (64-128-256), BN + dropout, GAP, dense head",
        quick_recipe=QUICK_RECIPE,
        quick_time_budget=QUICK_TIME_BUDGET,
    )
)
