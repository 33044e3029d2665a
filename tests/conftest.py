"""Shared fixtures: synthetic CIFAR-10 directories, the real data, and one tiny model exported
to every format once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cifar_deploy import _tf
from tests.helpers import CALIBRATION, REPO, save_tiny_model, write_cifar_dir


@pytest.fixture
def cifar_dir(tmp_path) -> Path:
    """The parent of a synthetic ``cifar-10-batches-py`` with two training batches."""
    write_cifar_dir(tmp_path / "data")
    return tmp_path / "data"


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path, monkeypatch):
    """No test sees the developer's CIFAR10_DIR or Keras cache unless it asks for them."""
    monkeypatch.delenv("CIFAR10_DIR", raising=False)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))


@pytest.fixture
def offline(monkeypatch):
    """Make Keras' downloads fail as they do without network."""
    keras = _tf.keras()
    from keras.src.utils import file_utils

    def no_network(*args, **kwargs):
        raise Exception("URL fetch failure: <urlopen error [Errno -2] Name or service not known>")

    monkeypatch.setattr(keras.utils, "get_file", no_network)
    monkeypatch.setattr(file_utils, "get_file", no_network)


def _real_data_dir() -> Path | None:
    """$CIFAR10_DIR as CI sets it (read at import, before tests isolate the environment), else
    the shared copy beside the checkout."""
    for candidate in (os.environ.get("CIFAR10_DIR"), REPO.parent / "shared" / "cifar10"):
        if candidate and (Path(candidate) / "cifar-10-batches-py" / "test_batch").exists():
            return Path(candidate)
    return None


REAL_DATA_DIR = _real_data_dir()


@pytest.fixture
def real_data_dir() -> Path:
    if REAL_DATA_DIR is None:
        pytest.skip("real CIFAR-10 not found: set CIFAR10_DIR (see ../shared/README.md)")
    return REAL_DATA_DIR


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """The tiny CNN, saved once as runs/cnn/best.keras (read-only for every test)."""
    return save_tiny_model(tmp_path_factory.mktemp("tiny") / "runs")


@pytest.fixture(scope="session")
def tiny_exports(tiny_model, tmp_path_factory) -> dict:
    """Every format and quantization of the tiny model, exported once per session:
    {(format, quantization): Artifact}. Tests copy what they change."""
    from cifar_deploy.export import ExportOptions, export_model

    out = tmp_path_factory.mktemp("tiny_exports") / "cnn"
    artifacts = export_model(tiny_model, "all", ExportOptions(calibration_images=CALIBRATION), out)
    assert all(a.status == "ok" for a in artifacts), [a.error for a in artifacts]
    return {(a.format, a.quantization): a for a in artifacts}


@pytest.fixture(scope="session")
def tiny_onnx(tiny_exports) -> Path:
    """The float32 ONNX export of the tiny CNN, shared by the serving tests."""
    return tiny_exports[("onnx", "none")].path
