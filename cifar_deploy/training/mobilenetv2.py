"""MobileNetV2 transfer learning: ImageNet backbone at 224x224, new dropout + dense head.

The model resizes 32x32 inputs to 224x224 and applies MobileNetV2's [-1, 1] scaling inside its
graph, so it takes the same raw 0..255 pixels as every other model. Training runs a head phase
(frozen backbone, Adam) and then fine-tunes the last half of the backbone with SGD + cosine while
batch-norm layers stay in inference mode.
"""

from __future__ import annotations

from pathlib import Path

from .. import _tf
from ..errors import InvalidOptionError, WeightsUnavailableError
from .layers import probabilities, raw_pixel_input
from .recipes import Phase, Recipe
from .registry import ModelSpec, register_model

BACKBONE_NAME = "mobilenetv2_backbone"
WEIGHT_CHOICES = "'imagenet', 'none', or a path to a local weights file"


def _resolve_weights(weights: str | None) -> str | None:
    if weights is None or str(weights).lower() == "none":
        return None
    if str(weights).lower() == "imagenet":
        return "imagenet"
    path = Path(weights).expanduser()
    if not path.is_file():
        raise InvalidOptionError(
            f"--weights {weights!r} is neither a file nor a known value; expected {WEIGHT_CHOICES}"
        )
    return str(path)


def build_mobilenetv2(
    num_classes: int = 10,
    weights: str | None = "imagenet",
    input_size: int = 224,  # side the 32x32 images are resized to before the backbone
    dropout: float = 0.2,
    alpha: float = 1.0,  # MobileNetV2 width multiplier
    name: str = "mobilenetv2",
):
    keras = _tf.keras()
    resolved = _resolve_weights(weights)
    try:
        backbone = keras.applications.MobileNetV2(
            input_shape=(input_size, input_size, 3),
            include_top=False,
            weights=resolved,
            alpha=alpha,
            pooling=None,
            name=BACKBONE_NAME,
        )
    except Exception as exc:  # download (URLError, ...) or unreadable/mismatched local file
        if resolved == "imagenet":
            raise WeightsUnavailableError(
                f"could not download MobileNetV2 ImageNet weights ({type(exc).__name__})",
                hint="offline? pass --weights none, or --weights PATH to a local "
                "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5",
            ) from None
        raise WeightsUnavailableError(
            f"could not load MobileNetV2 weights from {resolved}: {exc}; expected a no-top "
            f"MobileNetV2 weights file for alpha={alpha}"
        ) from None
    inputs = raw_pixel_input()
    x = keras.layers.Resizing(
        input_size, input_size, interpolation="bilinear", name=f"{name}_resize"
    )(inputs)
    x = keras.layers.Rescaling(1.0 / 127.5, offset=-1.0, name=f"{name}_scale")(x)  # to [-1, 1]
    # training=False keeps the backbone's batch norms in inference mode in every phase.
    x = backbone(x, training=False)
    x = keras.layers.GlobalAveragePooling2D(name=f"{name}_gap")(x)
    x = keras.layers.Dropout(dropout, name=f"{name}_dropout")(x)
    return keras.Model(inputs, probabilities(x, num_classes, name), name=name)


def set_trainable(model, mode: str, finetune_fraction: float = 0.5) -> None:
    """'head': backbone frozen; 'finetune': the last ``finetune_fraction`` of backbone layers
    trainable, batch-norm layers always frozen; 'all': everything trainable.

    Each backbone layer's flag is set explicitly: setting the backbone's own flag does not undo
    a flag an earlier phase set on one of its layers (a fine-tune followed by 'all')."""
    keras = _tf.keras()
    backbone = model.get_layer(BACKBONE_NAME)
    backbone.trainable = mode != "head"
    start = int(len(backbone.layers) * (1.0 - finetune_fraction)) if mode == "finetune" else 0
    for i, layer in enumerate(backbone.layers):
        is_bn = isinstance(layer, keras.layers.BatchNormalization)
        if mode == "head":
            layer.trainable = False
        elif mode == "finetune":
            layer.trainable = i >= start and not is_bn
        else:
            layer.trainable = True


RECIPE = Recipe(
    phases=(
        Phase("head", epochs=5, optimizer="adam", lr=1e-3, cosine=False, trainable="head"),
        Phase("finetune", epochs=50, optimizer="sgd", lr=1e-2, final_lr=0.0, trainable="finetune"),
    ),
    batch_size=64,
    label_smoothing=0.0,
    crop_padding=4,
    flip=True,
    early_stopping_patience=6,
    finetune_fraction=0.5,
)

register_model(
    ModelSpec(
        name="mobilenetv2",
        builder=build_mobilenetv2,
        recipe=RECIPE,
        description="MobileNetV2 (ImageNet) at 224x224, resize + [-1,1] scaling in-graph",
        accepts_weights=True,
        takes_weight_decay=False,  # regularized by dropout and early stopping instead
        set_trainable=set_trainable,
    )
)
