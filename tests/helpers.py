"""Test helpers: canonical-format CIFAR-10 files written on the fly, tiny models, tolerances.

Imported by the test modules as ``tests.helpers``; the fixtures built from them are in
``conftest.py``.
"""

from __future__ import annotations

import contextlib
import json
import pickle
import shutil
import tarfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
CLASS_NAMES = [
    b"airplane",
    b"automobile",
    b"bird",
    b"cat",
    b"deer",
    b"dog",
    b"frog",
    b"horse",
    b"ship",
    b"truck",
]


def to_rows(images: np.ndarray) -> np.ndarray:
    """NHWC uint8 -> the canonical (N, 3072) rows of R, G, B planes."""
    return images.transpose(0, 3, 1, 2).reshape(len(images), 3072)


def write_batch(path: Path, images: np.ndarray, labels, **extra) -> Path:
    payload = {
        b"batch_label": b"synthetic",
        b"labels": [int(v) for v in labels],
        b"data": to_rows(images),
        b"filenames": [b"x.png"] * len(labels),
        **extra,
    }
    with open(path, "wb") as fh:
        pickle.dump(payload, fh, protocol=2)
    return path


def synthetic_images(labels: np.ndarray, seed: int = 0) -> np.ndarray:
    """Images a tiny model can learn: each class has its own colour, plus noise."""
    palette = np.random.default_rng(1234).integers(30, 225, size=(10, 3))  # same in every batch
    rng = np.random.default_rng(seed)
    base = palette[labels][:, None, None, :].astype(np.int16)
    noise = rng.integers(-25, 26, size=(len(labels), 32, 32, 3))
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def write_cifar_dir(root: Path, train_batches=(1, 2), per_batch=60, test=60, seed=0) -> Path:
    """A canonical ``cifar-10-batches-py`` directory with the given training batches."""
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in train_batches:
        labels = np.arange(per_batch) % 10
        rng.shuffle(labels)
        write_batch(d / f"data_batch_{i}", synthetic_images(labels, seed=i), labels)
    labels = np.arange(test) % 10
    write_batch(d / "test_batch", synthetic_images(labels, seed=99), labels)
    with open(d / "batches.meta", "wb") as fh:
        pickle.dump(
            {b"label_names": CLASS_NAMES, b"num_cases_per_batch": per_batch}, fh, protocol=2
        )
    return d


def write_cifar_tarball(root: Path, **kwargs) -> Path:
    src = write_cifar_dir(root / "src", **kwargs)
    archive = root / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(src, arcname="cifar-10-batches-py")
    return archive


# Calibration images for int8 exports in unit tests (random pixels; calibration only needs range).
CALIBRATION = np.random.default_rng(0).integers(0, 256, size=(64, 32, 32, 3), dtype=np.uint8)

# Largest |probability - Keras probability| each artifact may show on a tiny random model.
# float32: same math, different kernels; float16: 10-bit mantissas; dynamic/int8: 8-bit weights
# (and activations), which on an untrained model move probabilities by a few hundredths.
TOLERANCE = {"none": 1e-5, "float16": 2e-3, "dynamic": 0.05, "int8": 0.08}

TINY_CNN = {"blocks": ((8, 1), (16, 1), (16, 1)), "head_units": 16}
TINY_SEED = 0


def save_tiny_model(directory: Path, name: str = "cnn", model=None, seed: int = TINY_SEED) -> Path:
    """A tiny CNN saved as <directory>/<name>/best.keras with the run.json that names it. Its
    weights come from ``seed``, so every session tests the same model (an unseeded one made the
    int8 checks depend on the draw); another seed makes another model."""
    from cifar_deploy.training import create_model

    run = directory / name
    run.mkdir(parents=True, exist_ok=True)
    if model is None:
        import keras

        keras.utils.set_random_seed(seed)
        model = create_model("cnn", **TINY_CNN)
    model.save(run / "best.keras")
    (run / "run.json").write_text(json.dumps({"model": name}))
    return run / "best.keras"


def copy_artifacts(artifacts, directory: Path) -> Path:
    """Copy artifacts with their sidecars into ``directory`` (hashes still match), as if they
    had been exported there: the source path, which sidecars record from the artifact's
    directory, still leads to the same source model."""
    import os

    from cifar_deploy.export.metadata import sidecar_path

    directory.mkdir(parents=True, exist_ok=True)
    for art in artifacts:
        if art.path.is_dir():
            shutil.copytree(art.path, directory / art.path.name)
        else:
            shutil.copy2(art.path, directory / art.path.name)
        record = json.loads(sidecar_path(art.path).read_text())
        if record.get("source"):
            source = (art.path.parent / record["source"]["path"]).resolve()
            record["source"]["path"] = os.path.relpath(source, directory.resolve())
        sidecar_path(directory / art.path.name).write_text(json.dumps(record, indent=2))
    return directory


@contextlib.contextmanager
def serving(app, limits=None):
    """``app`` served by uvicorn in a thread on a free loopback port, configured as ``serve``
    configures it (with ``limits``); yields "127.0.0.1:PORT" once it has started, and stops it
    afterwards."""
    with serving_server(app, limits) as (address, _):
        yield address


@contextlib.contextmanager
def serving_server(app, limits=None):
    """As :func:`serving`, yielding ("127.0.0.1:PORT", the uvicorn server): a test can stop it
    early (``server.should_exit = True``)."""
    import uvicorn

    from cifar_deploy.serving.limits import uvicorn_config

    server = uvicorn.Server(uvicorn_config(app, "127.0.0.1", 0, limits, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    assert server.started, "server did not start"
    try:
        yield f"127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}", server
    finally:
        server.should_exit = True
        thread.join(timeout=30)
