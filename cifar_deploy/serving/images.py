"""Image files in, labels out: decoding an uploaded or local PNG/JPEG to the model's input, and
the top-k labels of a probability row. No web framework here: ``predict`` and the server share it.
"""

from __future__ import annotations

import io
import warnings

import numpy as np

from ..contract import IMAGE_SIZE
from ..errors import RequestError

MAX_IMAGE_PIXELS = 4096 * 4096  # declared width x height beyond which an image is refused (413)


def decode_image(data: bytes, size: tuple[int, int] = (IMAGE_SIZE, IMAGE_SIZE)) -> np.ndarray:
    """A PNG or JPEG up to :data:`MAX_IMAGE_PIXELS` -> uint8 RGB at the model's ``size`` =
    (height, width), (32, 32) for our own models. The declared size is checked from the header
    before anything is decoded (a few-KB file can declare a gigapixel image), and a JPEG is
    decoded at the smallest scale (1/2 .. 1/8) that still covers twice the model's size, so its
    cost does not grow with its declared size."""
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise RequestError("the uploaded file is empty; expected a PNG or JPEG image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # checked below
            img = Image.open(io.BytesIO(data))  # reads the header only
        with img:
            if img.format not in ("PNG", "JPEG"):
                raise RequestError(f"expected a PNG or JPEG image, received {img.format}")
            width, height = img.size
            if width * height > MAX_IMAGE_PIXELS:
                raise RequestError(
                    f"the image declares {width} x {height} pixels; the limit is "
                    f"{MAX_IMAGE_PIXELS:,} pixels (this model takes {size[1]} x {size[0]})",
                    413,
                )
            if width < 1 or height < 1:
                raise RequestError("the image decodes to nothing (zero width or height)")
            if img.format == "JPEG":
                img.draft("RGB", (2 * size[1], 2 * size[0]))
            img.load()
            rgb = img.convert("RGB").resize((size[1], size[0]), Image.Resampling.BILINEAR)
    except RequestError:
        raise
    except Image.DecompressionBombError as exc:
        raise RequestError(f"the image is too large to decode ({exc})", 413) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise RequestError(f"not a decodable PNG or JPEG image ({exc})") from None
    return np.asarray(rgb, dtype=np.uint8)


def top_k(probs: np.ndarray, k: int, class_names) -> list[dict]:
    """The ``k`` most probable classes of one probability row, most probable first."""
    order = np.argsort(-probs)[:k]
    return [
        {"label": class_names[i], "class_id": int(i), "probability": float(probs[i])} for i in order
    ]
