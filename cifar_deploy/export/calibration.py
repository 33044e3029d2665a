"""Calibration images for full-integer quantization: a seeded, class-stratified sample of the
training split (never test images), raw uint8 pixels exactly as inference receives them."""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from ..data import load_cifar10, stratified_indices
from ..errors import DataNotFoundError


@lru_cache(maxsize=4)
def _sample(data_dir: str | None, count: int, seed: int) -> np.ndarray:
    try:
        data = load_cifar10(data_dir)
    except DataNotFoundError as exc:
        raise DataNotFoundError(
            f"int8 calibration needs CIFAR-10 training images: {exc.message}",
            hint="pass --data-dir PATH, or use --quantize dynamic (no calibration needed)",
        ) from None
    count = min(count, len(data.y_train))
    images = data.x_train[stratified_indices(data.y_train, count, seed)]
    images.setflags(write=False)
    return images


def calibration_sample(options) -> tuple[np.ndarray, dict]:
    """(uint8 images, record for the metadata) for ``options``."""
    if options.calibration_images is not None:
        images = np.asarray(options.calibration_images, dtype=np.uint8)
        source = "given"
    else:
        images = _sample(options.data_dir, options.calibration_samples, options.seed)
        source = "train split, class-stratified"
    record = {"samples": int(len(images)), "seed": options.seed, "source": source}
    return images, record
