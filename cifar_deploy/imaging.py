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
# Bytes one decode may hold: the decoded image in its own mode (4 bytes a pixel for RGBA,
# 2 for 16-bit grey, ...) plus its RGB copy. A 4096 x 4096 RGB image (48 MiB) fits; the same
# size in RGBA (64 + 48 MiB) does not, though its PNG may be a few hundred KB.
MAX_DECODED_BYTES = 64 * 2**20


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
                img.draft("RGB", (2 * size[1], 2 * size[0]))  # decodes at a smaller scale
            held = decoded_bytes(img)
            if held > MAX_DECODED_BYTES:
                raise ImageRefused(
                    f"the image decodes to {held / 2**20:.0f} MiB ({img.size[0]} x "
                    f"{img.size[1]} {img.mode}); the limit is {MAX_DECODED_BYTES / 2**20:.0f} MiB",
                    too_large=True,
                )
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


def decoded_bytes(img) -> int:
    """What decoding ``img`` (an opened, not yet loaded PIL image) and its RGB copy hold."""
    width, height = img.size
    per_pixel = len(img.getbands()) * _bytes(img.mode)
    rgb = 0 if img.mode == "RGB" else 3
    return width * height * (per_pixel + rgb)


def _bytes(mode: str) -> int:
    """Bytes per band of a PIL mode."""
    if mode.startswith("I;16"):  # I;16, I;16B, I;16L
        return 2
    if mode in ("I", "F"):
        return 4
    return 1
