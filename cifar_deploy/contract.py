"""The one contract every model, artifact, runtime and server shares.

Every model takes raw RGB pixels 0..255 in NHWC layout, ``(N, 32, 32, 3)``, under the tensor name
``images``, normalizes inside its graph, and returns ten class probabilities under the name
``probabilities``. Everything that names a tensor, checks a shape, lists the classes or records
library versions imports it from here.
"""

from __future__ import annotations

import platform

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
PREPROCESSING = (
    "raw RGB pixels 0..255 in NHWC layout (N, 32, 32, 3); resize images to 32x32 RGB first; "
    "normalization happens inside the model"
)
INPUT_DESCRIPTION = "float32 (N, 32, 32, 3), raw RGB 0..255"
# Input dtypes MediaPipe Tasks, the TFLite Task Library and ML Kit accept (with embedded metadata).
MOBILE_INPUT_DTYPES = ("uint8", "float32")


def batch_shape(batch: int | None) -> list[int | None]:
    """The input shape with a batch dimension (None: dynamic)."""
    return [batch, *INPUT_SHAPE]


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
