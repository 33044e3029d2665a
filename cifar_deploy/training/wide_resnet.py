"""Pre-activation Wide ResNet (Zagoruyko & Komodakis 2016): WRN-depth-width.

``depth = 6n + 4``: three groups of ``n`` basic blocks (16k, 32k, 64k filters for width k), each
block BN-ReLU-Conv3x3-BN-ReLU-Dropout-Conv3x3 with an identity or 1x1-conv shortcut. WRN-28-10 has
about 36.5M parameters. Trained with MixUp, SGD + Nesterov, warmup + cosine and L2 5e-4.
"""

from __future__ import annotations

from .. import _tf
from ..errors import InvalidOptionError
from .layers import kernel_regularizer, probabilities, raw_pixel_input, standardize
from .recipes import Phase, Recipe
from .registry import ModelSpec, register_model, register_pattern

BN_MOMENTUM = 0.9  # the reference (PyTorch) implementation's 0.1 in Keras' convention


def blocks_per_group(depth: int) -> int:
    if depth < 10 or (depth - 4) % 6:
        raise InvalidOptionError(
            f"Wide ResNet depth must be 6n + 4 with n >= 1 (10, 16, 22, 28, ...), received {depth}"
        )
    return (depth - 4) // 6


def _block(x, filters: int, stride: int, dropout: float, reg, prefix: str):
    keras = _tf.keras()
    layers = keras.layers
    pre = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{prefix}_bn1")(x)
    pre = layers.ReLU(name=f"{prefix}_relu1")(pre)
    if stride != 1 or x.shape[-1] != filters:
        shortcut = layers.Conv2D(
            filters,
            1,
            strides=stride,
            use_bias=False,
            kernel_regularizer=reg,
            name=f"{prefix}_shortcut",
        )(pre)
    else:
        shortcut = x
    y = layers.Conv2D(
        filters,
        3,
        strides=stride,
        padding="same",
        use_bias=False,
        kernel_regularizer=reg,
        name=f"{prefix}_conv1",
    )(pre)
    y = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{prefix}_bn2")(y)
    y = layers.ReLU(name=f"{prefix}_relu2")(y)
    if dropout:
        y = layers.Dropout(dropout, name=f"{prefix}_dropout")(y)
    y = layers.Conv2D(
        filters, 3, padding="same", use_bias=False, kernel_regularizer=reg, name=f"{prefix}_conv2"
    )(y)
    return layers.Add(name=f"{prefix}_add")([shortcut, y])


def build_wide_resnet(
    depth: int = 28,
    width: int = 10,
    num_classes: int = 10,
    dropout: float = 0.3,  # inside each residual block, between the convolutions
    weight_decay: float = 5e-4,
    name: str | None = None,
):
    keras = _tf.keras()
    n = blocks_per_group(depth)
    if width < 1:
        raise InvalidOptionError(f"Wide ResNet width must be >= 1, received {width}")
    name = name or f"wrn_{depth}_{width}"
    reg = kernel_regularizer(weight_decay)
    inputs = raw_pixel_input()
    x = standardize(inputs, name)
    x = keras.layers.Conv2D(
        16, 3, padding="same", use_bias=False, kernel_regularizer=reg, name=f"{name}_stem_conv"
    )(x)
    for g, filters in enumerate((16 * width, 32 * width, 64 * width), start=1):
        for b in range(1, n + 1):
            stride = 2 if (g > 1 and b == 1) else 1
            x = _block(x, filters, stride, dropout, reg, f"{name}_group{g}_block{b}")
    x = keras.layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_final_bn")(x)
    x = keras.layers.ReLU(name=f"{name}_final_relu")(x)
    x = keras.layers.GlobalAveragePooling2D(name=f"{name}_gap")(x)
    return keras.Model(inputs, probabilities(x, num_classes, name), name=name)


RECIPE = Recipe(
    phases=(Phase("train", epochs=300, optimizer="sgd", lr=0.1, warmup_epochs=5, final_lr=1e-3),),
    batch_size=128,
    label_smoothing=0.0,
    crop_padding=4,
    flip=True,
    mixup_alpha=0.2,
    weight_decay=5e-4,
    early_stopping_patience=30,
)


def _spec(depth: int, width: int) -> ModelSpec:
    blocks_per_group(depth)
    return ModelSpec(
        name=f"wrn-{depth}-{width}",
        builder=build_wide_resnet,
        recipe=RECIPE,
        description=f"pre-activation Wide ResNet, depth {depth}, width {width}, dropout 0.3",
        builder_kwargs=(("depth", depth), ("width", width)),
    )


register_model(_spec(28, 10))
register_pattern(r"wrn-(\d+)-(\d+)", lambda m: _spec(int(m.group(1)), int(m.group(2))))
