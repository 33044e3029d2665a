"""Classify local image files with any predictor; one bad file never stops the others."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..data import CLASS_NAMES
from .runtimes import Predictor
from .server import RequestError, decode_image, top_k


def classify_files(predictor: Predictor, files: Sequence[Path], k: int = 3) -> list[dict]:
    """One record per file: its top-k labels, or the reason it could not be read."""
    names = list(predictor.metadata.class_names if predictor.metadata else CLASS_NAMES)
    records, good, images = [], [], []
    for f in map(Path, files):
        record = {"file": str(f), "predictions": [], "error": None}
        try:
            images.append(decode_image(f.read_bytes()))
            good.append(record)
        except (OSError, RequestError) as exc:
            record["error"] = exc.message if isinstance(exc, RequestError) else (
                exc.strerror or str(exc))
        records.append(record)
    if images:
        probs = predictor.predict(np.stack(images))
        for record, p in zip(good, probs):
            record["predictions"] = top_k(p, k, names)
    return records
