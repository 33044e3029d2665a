"""Image files in, labels out: decoding an uploaded or local PNG/JPEG to the model's input, and
the top-k labels of a probability row. No web framework here: ``predict`` and the server share it.
"""

from __future__ import annotations

import io

import numpy as np

from ..contract import IMAGE_SIZE
from ..errors import RequestError


def decode_image(data: bytes) -> np.ndarray:
    """A PNG or JPEG of any size -> uint8 (32, 32, 3) RGB."""
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise RequestError("the uploaded file is empty; expected a PNG or JPEG image")
    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.format not in ("PNG", "JPEG"):
                raise RequestError(f"expected a PNG or JPEG image, received {img.format}")
            img.load()
            if img.width < 1 or img.height < 1:
                raise RequestError("the image decodes to nothing (zero width or height)")
            size = (IMAGE_SIZE, IMAGE_SIZE)
            rgb = img.convert("RGB").resize(size, Image.Resampling.BILINEAR)
    except RequestError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise RequestError(f"not a decodable PNG or JPEG image ({exc})") from None
    return np.asarray(rgb, dtype=np.uint8)


def top_k(probs: np.ndarray, k: int, class_names) -> list[dict]:
    """The ``k`` most probable classes of one probability row, most probable first."""
    order = np.argsort(-probs)[:k]
    return [
        {"label": class_names[i], "class_id": int(i), "probability": float(probs[i])} for i in order
    ]
