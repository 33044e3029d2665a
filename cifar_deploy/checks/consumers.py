"""The libraries an app embeds, run on the artifact as the app would run it.

An artifact is ready for phones when the mobile library loads it with its labels and answers like
our own runtime, so ``verify --consumer mediapipe`` runs MediaPipe Tasks' ``ImageClassifier``
(the maintained successor of the TFLite Task Library; the same C++ task graph runs in its
Android, iOS, Web and Python packages) on every exported ``.tflite`` it can take: uint8 or
float32 input with embedded metadata. MediaPipe is an optional dependency (the ``mobile`` extra).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import _tf
from ..contract import MOBILE_INPUT_DTYPES
from ..errors import InvalidOptionError
from ..export.metadata import Metadata


@dataclass
class ConsumerOutput:
    probabilities: np.ndarray  # (N, classes), by class index
    category_names: list[str]  # the names the library reports, by class index


class MediaPipeConsumer:
    """MediaPipe Tasks' ``ImageClassifier`` in image mode, every category returned."""

    name = "mediapipe"

    @staticmethod
    def accepts(meta: Metadata) -> str | None:
        """None when the library can load the artifact, else why not."""
        if meta.format != "tflite":
            return f"MediaPipe runs .tflite models; this is {meta.format}"
        if meta.input.dtype not in MOBILE_INPUT_DTYPES:
            return f"MediaPipe takes uint8 or float32 input; this model takes {meta.input.dtype}"
        return None

    @staticmethod
    def version() -> str:
        import importlib.metadata as md

        return md.version("mediapipe")

    def __init__(self, path: Path, classes: int):
        self.classes = classes  # the model's output count: MediaPipe returns every category
        try:
            from mediapipe.tasks.python import BaseOptions, vision
        except ImportError:
            raise InvalidOptionError(
                "--consumer mediapipe needs MediaPipe, which is not installed",
                hint="pip install 'cifar-deploy[mobile]'",
            ) from None
        options = vision.ImageClassifierOptions(
            base_options=BaseOptions(model_asset_path=str(path)), max_results=classes
        )
        with _tf.quiet_native():  # MediaPipe's and XNNPACK's start-up notices
            self._classifier = vision.ImageClassifier.create_from_options(options)

    def run(self, images: np.ndarray) -> ConsumerOutput:
        import mediapipe as mp

        probs = np.zeros((len(images), self.classes), np.float32)
        names = [""] * self.classes
        for i, image in enumerate(np.asarray(images, dtype=np.uint8)):
            frame = mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(image))
            for category in self._classifier.classify(frame).classifications[0].categories:
                probs[i, category.index] = category.score
                names[category.index] = category.category_name or ""
        return ConsumerOutput(probs, names)

    def close(self) -> None:
        self._classifier.close()


CONSUMERS: dict[str, Callable[..., MediaPipeConsumer]] = {"mediapipe": MediaPipeConsumer}


def get_consumer(name: str):
    from ..errors import unknown_name

    if name not in CONSUMERS:
        raise unknown_name("consumer", name, CONSUMERS)
    return CONSUMERS[name]
