"""Image files in, labels out: decoding an uploaded or local PNG/JPEG to the model's input, and
the top-k labels of a probability row. No web framework here: ``predict`` and the server share it.
"""

from __future__ import annotations

import io

import numpy as np

from ..contract import IMAGE_SIZE
from ..errors import RequestError
from ..imaging import MAX_IMAGE_PIXELS, ImageRefused, to_rgb

__all__ = ["MAX_IMAGE_PIXELS", "decode_image", "top_k"]


def decode_image(data: bytes, size: tuple[int, int] = (IMAGE_SIZE, IMAGE_SIZE)) -> np.ndarray:
    """Uploaded bytes -> uint8 RGB at the model's ``size`` = (height, width), through
    :func:`cifar_deploy.imaging.to_rgb`; a refusal is a 400 (413 for a declared size over
    :data:`MAX_IMAGE_PIXELS`)."""
    if not data:
        raise RequestError("the uploaded file is empty; expected a PNG or JPEG image")
    try:
        return to_rgb(io.BytesIO(data), size)
    except ImageRefused as exc:
        raise RequestError(exc.message, 413 if exc.too_large else 400) from None


def top_k(probs: np.ndarray, k: int, class_names) -> list[dict]:
    """The ``k`` most probable classes of one probability row, most probable first."""
    order = np.argsort(-probs)[:k]
    return [
        {"label": class_names[i], "class_id": int(i), "probability": float(probs[i])} for i in order
    ]
