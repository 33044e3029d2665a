"""Calibration images for full-integer quantization: a seeded, class-stratified sample of the
training split (never test images), raw uint8 pixels exactly as inference receives them."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

from ..contract import Signature
from ..data import fit_images, load_dataset, stratified_indices
from ..errors import DataNotFoundError
from .base import DEFAULT_CALIBRATION_SAMPLES


@lru_cache(maxsize=4)
def _sample(data_dir: Path | None, count: int, seed: int, size: tuple[int, int]) -> np.ndarray:
    try:
        data = load_dataset(data_dir, size=size)
    except DataNotFoundError as exc:
        raise DataNotFoundError(
            f"int8 calibration needs training images: {exc.message}",
            hint="pass --data-dir PATH, or use --quantize dynamic (no calibration needed)",
        ) from None
    count = min(count, len(data.y_train))
    images = data.x_train[stratified_indices(data.y_train, count, seed)]
    images.setflags(write=False)
    return images


def calibration_sample(options, signature: Signature = Signature()) -> tuple[np.ndarray, dict]:
    """(uint8 images at the model's size, record for the metadata) for ``options``."""
    size = (signature.height, signature.width)
    if options.calibration_images is not None:
        images = fit_images(np.asarray(options.calibration_images, dtype=np.uint8), size)
        source = "given"
    else:
        count = options.calibration_samples or DEFAULT_CALIBRATION_SAMPLES
        images = _sample(options.data_dir, count, options.seed, size)
        source = "train split, class-stratified"
    record = {"samples": int(len(images)), "seed": options.seed, "source": source}
    return images, record
