"""The one contract every model, artifact, runtime and server shares.

Every artifact takes raw RGB pixels 0..255 in NHWC layout, ``(N, H, W, 3)``, under the tensor
name ``images``, normalizes inside its graph, and returns class probabilities under the name
``probabilities``. Our own models are ``(N, 32, 32, 3)`` to ten CIFAR-10 classes; a model a user
brings keeps its own size and class count (:class:`Signature`, read from the model or from an
artifact's sidecar), and its own input scaling, declared as a :class:`Preprocess` and baked into
every exported graph. Everything that names a tensor, checks a shape, lists the classes, applies
a declared preprocessing or records library versions imports it from here.
"""

from __future__ import annotations

import math
import platform
from dataclasses import dataclass

import numpy as np

from . import __version__

INPUT_NAME = "images"  # the input tensor of every model and artifact
OUTPUT_NAME = "probabilities"  # the output tensor: float32 class probabilities
IMAGE_SIZE = 32  # pixels per side
CHANNELS = 3  # RGB
INPUT_SHAPE = (IMAGE_SIZE, IMAGE_SIZE, CHANNELS)  # one image, NHWC without the batch
NUM_CLASSES = 10
CLASS_NAMES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
INPUT_DESCRIPTION = "float32 (N, 32, 32, 3), raw RGB 0..255"
# Input dtypes MediaPipe Tasks, the TFLite Task Library and ML Kit accept (with embedded metadata).
MOBILE_INPUT_DTYPES = ("uint8", "float32")


def batch_shape(batch: int | None, image_shape: tuple[int, ...] = INPUT_SHAPE) -> list[int | None]:
    """The input shape with a batch dimension (None: dynamic)."""
    return [batch, *image_shape]


MAX_SIDE = 4096  # pixels: the largest input height or width a model may declare


@dataclass(frozen=True)
class Signature:
    """A model's input size and class count: ``(N, height, width, 3)`` raw pixels to
    ``(N, classes)`` probabilities. The default is CIFAR-10's."""

    height: int = IMAGE_SIZE
    width: int = IMAGE_SIZE
    classes: int = NUM_CLASSES

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (self.height, self.width, CHANNELS)

    def batch_shape(self, batch: int | None) -> list[int | None]:
        return batch_shape(batch, self.image_shape)

    def describe(self) -> str:
        return f"(N, {self.height}, {self.width}, {CHANNELS}) -> (N, {self.classes})"

    @classmethod
    def of_shapes(cls, input_shape, output_shape, where: str) -> Signature:
        """The signature of a model with these Keras shapes (batch first); raises
        ``InvalidModelError`` naming what was received and what is expected."""
        from .errors import InvalidModelError

        inp, out = tuple(input_shape), tuple(output_shape)
        expected = (
            "expected an image classifier from (N, H, W, 3) RGB images (H and W fixed, "
            "1..4096) to (N, classes) scores, at least 2 classes"
        )
        ok_side = lambda d: type(d) is int and 1 <= d <= MAX_SIDE  # noqa: E731
        if (
            len(inp) != 4
            or inp[3] != CHANNELS
            or not (ok_side(inp[1]) and ok_side(inp[2]))
            or len(out) != 2
            or not (type(out[1]) is int and out[1] >= 2)
        ):
            raise InvalidModelError(f"{where}: {expected}; received {inp} -> {out}")
        return cls(height=inp[1], width=inp[2], classes=out[1])

    @classmethod
    def of_keras(cls, model, where: str) -> Signature:
        inputs = getattr(model, "inputs", None) or []
        outputs = getattr(model, "outputs", None) or []
        if len(inputs) != 1 or len(outputs) != 1:
            from .errors import InvalidModelError

            raise InvalidModelError(
                f"{where}: has {len(inputs)} inputs and {len(outputs)} outputs; expected an "
                "image classifier with one input and one output"
            )
        return cls.of_shapes(model.input_shape, model.output_shape, where)

    @classmethod
    def of_tensors(cls, input_shape, output_shape) -> Signature:
        """From a sidecar's tensor shapes (``[None, H, W, 3]``, ``[None, K]``)."""
        return cls(height=input_shape[1], width=input_shape[2], classes=output_shape[-1])


def default_class_names(classes: int) -> list[str]:
    """CIFAR-10's names for ten classes, else ``class_0 .. class_{N-1}``."""
    if classes == NUM_CLASSES:
        return list(CLASS_NAMES)
    return [f"class_{i}" for i in range(classes)]


def preprocessing_text(signature: Signature = Signature()) -> str:
    """What every artifact's input takes, in words (sidecars, ONNX metadata, the server)."""
    h, w = signature.height, signature.width
    return (
        f"raw RGB pixels 0..255 in NHWC layout (N, {h}, {w}, 3); resize images to {h}x{w} RGB "
        "first; normalization happens inside the model"
    )


PREPROCESSING = preprocessing_text()  # our models' (32x32) wording


# --- Declared preprocessing: what a model a user brings expects its input scaled as ----------

PREPROCESS_MODES = ("raw", "unit", "tf", "torch", "caffe")
# Per mode: (reverse RGB to BGR first, per-channel scale, per-channel offset): y = x * a + b,
# the keras.applications conventions (imagenet_utils.preprocess_input) for tf, torch and caffe.
_TORCH_MEAN, _TORCH_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
_MODES: dict[str, tuple[bool, tuple, tuple]] = {
    "raw": (False, (1.0, 1.0, 1.0), (0.0, 0.0, 0.0)),
    "unit": (False, (1 / 255,) * 3, (0.0, 0.0, 0.0)),
    "tf": (False, (1 / 127.5,) * 3, (-1.0, -1.0, -1.0)),
    "torch": (
        False,
        tuple(1 / (255 * s) for s in _TORCH_STD),
        tuple(-m / s for m, s in zip(_TORCH_MEAN, _TORCH_STD)),
    ),
    "caffe": (True, (1.0, 1.0, 1.0), tuple(-m for m in _CAFFE_MEAN_BGR)),
}
MODE_MEANING = {
    "raw": "none: the model takes raw pixels 0..255",
    "unit": "x / 255",
    "tf": "x / 127.5 - 1",
    "torch": "x / 255, then ImageNet mean/std per channel",
    "caffe": "RGB to BGR, then minus ImageNet's BGR mean",
}
# CIFAR-10's per-channel mean and std of x/255 (the well-known figures the original scripts use).
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


@dataclass(frozen=True)
class Preprocess:
    """A model's declared input scaling: ``mode`` (see :data:`MODE_MEANING`), then optionally
    ``(x - mean) / std`` per RGB channel. Applied inside every exported graph, so that every
    artifact takes raw pixels 0..255 whatever the model expects."""

    mode: str = "raw"
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None

    def __post_init__(self):
        from .errors import InvalidOptionError

        if self.mode not in PREPROCESS_MODES:
            raise InvalidOptionError(
                f"--preprocess must be one of: {', '.join(PREPROCESS_MODES)}; "
                f"received {self.mode!r}"
            )
        for flag, values in (("--mean", self.mean), ("--std", self.std)):
            if values is None:
                continue
            if len(values) != CHANNELS or not all(
                isinstance(v, (int, float)) and math.isfinite(v) for v in values
            ):
                raise InvalidOptionError(
                    f"{flag} takes three finite numbers R,G,B; received {values!r}"
                )
        if self.std is not None and min(self.std) <= 0:
            raise InvalidOptionError(f"--std values must be positive; received {self.std!r}")

    @property
    def is_identity(self) -> bool:
        return self.mode == "raw" and self.mean is None and self.std is None

    def affine(self) -> tuple[bool, np.ndarray, np.ndarray]:
        """(reverse the channels first, scale, offset): the whole preprocessing as
        ``x[..., ::-1 if reverse] * scale + offset``, float32 per channel."""
        reverse, scale, offset = _MODES[self.mode]
        scale, offset = np.array(scale, np.float64), np.array(offset, np.float64)
        mean = np.array(self.mean if self.mean is not None else (0.0,) * 3)
        std = np.array(self.std if self.std is not None else (1.0,) * 3)
        # (x*a + b - m) / s = x * (a/s) + (b - m)/s
        return reverse, (scale / std).astype(np.float32), ((offset - mean) / std).astype(np.float32)

    def __call__(self, images):
        """The preprocessed batch: works on numpy arrays and on TensorFlow tensors alike (the
        same arithmetic, traced into a graph when called inside one)."""
        if self.is_identity:
            return images
        reverse, scale, offset = self.affine()
        if reverse:
            images = images[..., ::-1]
        return images * scale + offset

    def flags(self) -> str:
        """The command-line flags that declare this preprocessing."""
        text = f"--preprocess {self.mode}"
        if self.mean is not None:
            text += " --mean " + ",".join(f"{v:g}" for v in self.mean)
        if self.std is not None:
            text += " --std " + ",".join(f"{v:g}" for v in self.std)
        return text

    def describe(self) -> str:
        text = MODE_MEANING[self.mode]
        if self.mean is not None or self.std is not None:
            text += ", then (x - mean) / std per channel"
        return text

    def to_dict(self) -> dict:
        return {
            "mode": self.mode,
            "mean": list(self.mean) if self.mean is not None else None,
            "std": list(self.std) if self.std is not None else None,
        }

    @classmethod
    def from_dict(cls, data: dict) -> Preprocess:
        mean, std = data.get("mean"), data.get("std")
        return cls(
            mode=data.get("mode", "raw"),
            mean=tuple(mean) if mean is not None else None,
            std=tuple(std) if std is not None else None,
        )


def parse_channels(text: str | None, flag: str) -> tuple[float, float, float] | None:
    """``"0.49,0.48,0.45"`` -> a float triple (None stays None); a one-line error otherwise."""
    if text is None:
        return None
    from .errors import InvalidOptionError

    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != CHANNELS or not all(math.isfinite(v) for v in values):
        raise InvalidOptionError(f"{flag} takes three numbers R,G,B; received {text!r}")
    return values


@dataclass(frozen=True)
class Declaration:
    """What a user said of a Keras model on the command line, for verify and bench: the
    preprocessing it was trained with (None: not said) and whether it needs a softmax."""

    preprocess: Preprocess | None = None
    add_softmax: bool = False

    def flags(self) -> str:
        said = [self.preprocess.flags()] if self.preprocess is not None else []
        return " ".join(said + (["--add-softmax"] if self.add_softmax else []))


# Distributions whose versions every run record and sidecar lists (when installed).
_VERSIONED = (
    "tensorflow",
    "keras",
    "numpy",
    "tf2onnx",
    "onnx",
    "onnxruntime-gpu",
    "onnxruntime",
    "ai-edge-litert",
)


def library_versions() -> dict[str, str]:
    """cifar-deploy, Python and the installed ML libraries, by distribution name."""
    import importlib.metadata as md

    versions = {"cifar_deploy": __version__, "python": platform.python_version()}
    for dist in _VERSIONED:
        try:
            versions[dist] = md.version(dist)
        except md.PackageNotFoundError:
            pass
    return versions
