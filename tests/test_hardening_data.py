"""Specification: a data file cannot make the loader allocate more than the file holds (issue
#14, part 3). The unpickler accepts exactly numpy's own array encoding; archive members and batch
files are size-checked before they are read; a dataset missing classes warns."""

from __future__ import annotations

import io
import logging
import pickle
import resource
import tarfile

import numpy as np
import pytest

from cifar_deploy.data import MAX_MEMBER_BYTES, load_cifar10, safe_unpickle
from cifar_deploy.errors import DataFormatError, UnsafePickleError
from tests.helpers import write_batch, write_cifar_dir

_multiarray = np._core.multiarray if hasattr(np, "_core") else np.core.multiarray


class _Reduce:
    """Pickles as ``func(*args)``: how a hostile file calls an allowed global with its own
    arguments."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def hostile(payload) -> bytes:
    return pickle.dumps({b"data": payload, b"labels": [0]}, protocol=2)


def test_an_array_constructed_with_a_declared_shape_is_refused_before_allocation():
    data = hostile(_Reduce(_multiarray._reconstruct, np.ndarray, (300_000, 3072), b"B"))
    assert len(data) < 200  # bytes: a tiny file that would claim 921 MB of images
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(UnsafePickleError, match="numpy writes"):
        safe_unpickle(data, "evil_batch")
    grown_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown_kb < 100_000  # KB: far below the 921,600,000 bytes declared


def test_a_state_declaring_a_terabyte_is_a_format_error():
    empty = _Reduce(_multiarray._reconstruct, np.ndarray, (0,), b"b")

    class Terabyte:
        def __reduce__(self):
            return empty.__reduce__() + ((1, (2**40,), np.dtype("u1"), False, b"abc"),)

    with pytest.raises(DataFormatError, match="corrupt pickle"):
        safe_unpickle(hostile(Terabyte()), "tib_batch")


@pytest.mark.parametrize(
    "payload, refused",
    [
        (_Reduce(np.dtype, "O"), "dtype 'O'"),
        (_Reduce(_Reduce, 1), "to load tests.test_hardening_data._Reduce"),
        (_Reduce(__import__("_codecs").encode, "x" * 10, "zlib"), "_codecs.encode"),
        (_Reduce(_multiarray._reconstruct, np.ndarray, (0,), b"B"), "numpy writes"),
    ],
)
def test_allowed_globals_with_arguments_numpy_never_writes_are_refused(payload, refused):
    with pytest.raises(UnsafePickleError, match=refused):
        safe_unpickle(hostile(payload), "odd_batch")


def test_genuine_arrays_of_both_pickle_dialects_still_load():
    images = np.arange(2 * 3072, dtype=np.uint8).reshape(2, 3072)
    for protocol in (2, 4):
        obj = safe_unpickle(pickle.dumps({b"data": images}, protocol=protocol), "batch")
        assert np.array_equal(obj[b"data"], images)


def test_an_archive_member_declaring_more_than_a_batch_is_refused_unread(tmp_path):
    src = write_cifar_dir(tmp_path / "src")
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(src, arcname="cifar-10-batches-py")
        info = tarfile.TarInfo("cifar-10-batches-py/data_batch_3")
        info.size = MAX_MEMBER_BYTES + 1
        tar.addfile(info, io.BytesIO(bytes(info.size)))  # zeros: a few KB compressed
    assert archive.stat().st_size < 2 * 2**20
    with pytest.raises(DataFormatError, match="refused above 67,108,864 bytes without reading"):
        load_cifar10(archive, download=False)


def test_an_oversized_batch_file_in_a_directory_is_refused_unread(tmp_path):
    root = write_cifar_dir(tmp_path / "data")
    with open(root / "data_batch_3", "wb") as fh:
        fh.truncate(10 * MAX_MEMBER_BYTES)  # sparse: no disk used, 640 MB declared
    with pytest.raises(DataFormatError, match="data_batch_3: 671,088,640 bytes"):
        load_cifar10(root.parent, download=False)


def test_a_dataset_missing_classes_loads_with_a_warning(tmp_path, caplog):
    root = write_cifar_dir(tmp_path / "data")
    labels = np.zeros(60, np.int64)  # every training image is an airplane
    write_batch(root / "data_batch_1", np.zeros((60, 32, 32, 3), np.uint8), labels)
    write_batch(root / "data_batch_2", np.zeros((60, 32, 32, 3), np.uint8), labels)
    with caplog.at_level(logging.WARNING, logger="cifar_deploy"):
        data = load_cifar10(root.parent, download=False)
    assert len(data.y_train) == 120
    warned = [r.getMessage() for r in caplog.records if "classes" in r.getMessage()]
    assert warned == [
        "the training data has no images of 9 of 10 classes (automobile, bird, "
        "cat, deer, dog, frog, horse, ship, truck)"
    ]
