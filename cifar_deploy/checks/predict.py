"""``cifar-deploy predict``: classify local image files with any predictor; one bad file never
stops the others."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import RequestError
from ..runtime.predictors import Predictor
from ..serving.images import decode_image, top_k


def classify_files(predictor: Predictor, files: Sequence[Path], k: int = 3) -> list[dict]:
    """One record per file: its top-k labels, or the reason it could not be read."""
    names = predictor.class_names
    size = (predictor.signature.height, predictor.signature.width)
    records, good, images = [], [], []
    for f in map(Path, files):
        record = {"file": str(f), "predictions": [], "error": None}
        try:
            images.append(decode_image(f.read_bytes(), size))
            good.append(record)
        except RequestError as exc:
            record["error"] = exc.message
        except OSError as exc:
            record["error"] = exc.strerror or str(exc)
        records.append(record)
    if images:
        probs = predictor.predict(np.stack(images))
        for record, p in zip(good, probs):
            record["predictions"] = top_k(p, k, names)
    return records
