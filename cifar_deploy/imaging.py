"""One way to turn a PNG or JPEG into the model's input: uint8 RGB at the model's size.

The server's uploads, ``predict``'s files and image-folder data sets all decode here, so that an
image scores the same wherever it comes from. Callers turn :class:`ImageRefused` into their own
error (an HTTP status, a data error naming the file).
"""

from __future__ import annotations

import warnings
from typing import BinaryIO

import numpy as np

MAX_IMAGE_PIXELS = 4096 * 4096  # declared width x height beyond which an image is refused


class ImageRefused(ValueError):
    """Not an image we decode: ``too_large`` when only its declared size is the problem."""

    def __init__(self, message: str, too_large: bool = False):
        super().__init__(message)
        self.message = message
        self.too_large = too_large


def to_rgb(source: str | BinaryIO, size: tuple[int, int]) -> np.ndarray:
    """A PNG or JPEG (a path or a binary file object) -> uint8 RGB ``(height, width, 3)`` at
    ``size`` = (height, width), resized bilinearly. The declared size is checked from the header
    before anything is decoded (a few-KB file can declare a gigapixel image), and a JPEG is
    decoded at the smallest scale (1/2 .. 1/8) that still covers twice ``size``, so its cost
    does not grow with its declared size."""
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # checked below
            img = Image.open(source)  # reads the header only
        with img:
            if img.format not in ("PNG", "JPEG"):
                raise ImageRefused(f"expected a PNG or JPEG image, received {img.format}")
            width, height = img.size
            if width * height > MAX_IMAGE_PIXELS:
                raise ImageRefused(
                    f"the image declares {width} x {height} pixels; the limit is "
                    f"{MAX_IMAGE_PIXELS:,} pixels (this model takes {size[1]} x {size[0]})",
                    too_large=True,
                )
            if width < 1 or height < 1:
                raise ImageRefused("the image decodes to nothing (zero width or height)")
            if img.format == "JPEG":
                img.draft("RGB", (2 * size[1], 2 * size[0]))
            img.load()
            rgb = img.convert("RGB")
            if rgb.size != (size[1], size[0]):
                rgb = rgb.resize((size[1], size[0]), Image.Resampling.BILINEAR)
            return np.asarray(rgb, dtype=np.uint8)
    except ImageRefused:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageRefused(f"the image is too large to decode ({exc})", too_large=True) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise ImageRefused(f"not a decodable PNG or JPEG image ({exc})") from None
