"""Specification of the CIFAR-10 loader (cifar_deploy.data)."""

from __future__ import annotations

import logging
import os
import pickle
import tarfile

import numpy as np
import pytest

from cifar_deploy import data
from cifar_deploy.errors import DataFormatError, DataNotFoundError, UnsafePickleError
from tests.helpers import to_rows, write_batch, write_cifar_dir, write_cifar_tarball


def test_loads_a_partial_directory_as_uint8_nhwc(cifar_dir):
    d = data.load_cifar10(cifar_dir, download=False)
    assert d.x_train.shape == (120, 32, 32, 3) and d.x_train.dtype == np.uint8
    assert d.x_test.shape == (60, 32, 32, 3)
    assert d.y_train.dtype == np.int64 and set(d.y_train) == set(range(10))
    assert d.train_batches == ("data_batch_1", "data_batch_2")
    assert d.missing_batches == ("data_batch_3", "data_batch_4", "data_batch_5")
    assert d.class_names[0] == "airplane" and len(d.class_names) == 10


def test_rows_are_rgb_planes_converted_to_nhwc(tmp_path):
    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    img = np.zeros((1, 32, 32, 3), np.uint8)
    img[0, 2, 5] = (10, 20, 30)  # row 2, column 5: R, G, B
    write_batch(d / "data_batch_1", img, [3])
    write_batch(d / "test_batch", img, [3])
    rows = to_rows(img)
    assert rows[0, 2 * 32 + 5] == 10 and rows[0, 1024 + 2 * 32 + 5] == 20  # the plane layout
    loaded = data.load_cifar10(tmp_path, download=False)
    assert tuple(loaded.x_train[0, 2, 5]) == (10, 20, 30)
    assert loaded.x_train.sum() == 60


def test_warns_when_fewer_than_five_training_batches(cifar_dir, caplog):
    with caplog.at_level(logging.WARNING, logger="cifar_deploy"):
        data.load_cifar10(cifar_dir, download=False)
    assert "only 2 of 5" in caplog.text


def test_no_warning_with_all_five_batches(tmp_path, caplog):
    write_cifar_dir(tmp_path, train_batches=(1, 2, 3, 4, 5), per_batch=10, test=10)
    with caplog.at_level(logging.WARNING, logger="cifar_deploy"):
        d = data.load_cifar10(tmp_path, download=False)
    assert len(d.y_train) == 50 and "only" not in caplog.text


def test_tarball_gives_the_same_arrays_as_the_directory(tmp_path):
    archive = write_cifar_tarball(tmp_path)
    from_tar = data.load_cifar10(archive, download=False)
    from_dir = data.load_cifar10(tmp_path / "src", download=False)
    np.testing.assert_array_equal(from_tar.x_train, from_dir.x_train)
    np.testing.assert_array_equal(from_tar.y_test, from_dir.y_test)
    # A directory that holds only the archive works too.
    only_archive = tmp_path / "only"
    only_archive.mkdir()
    os.replace(archive, only_archive / "cifar-10-python.tar.gz")
    assert len(data.load_cifar10(only_archive, download=False).y_train) == 120


def test_lookup_order_explicit_then_env_then_keras_cache(tmp_path, monkeypatch):
    explicit = write_cifar_dir(tmp_path / "explicit", per_batch=10, test=10).parent
    env = write_cifar_dir(tmp_path / "env", per_batch=20, test=10).parent
    cache = write_cifar_dir(tmp_path / "keras_home" / "datasets", per_batch=30, test=10).parent
    assert cache == tmp_path / "keras_home" / "datasets"
    monkeypatch.setenv("CIFAR10_DIR", str(env))
    assert len(data.load_cifar10(explicit, download=False).y_train) == 20
    assert len(data.load_cifar10(None, download=False).y_train) == 40
    monkeypatch.delenv("CIFAR10_DIR")
    assert len(data.load_cifar10(None, download=False).y_train) == 60


def test_offline_without_data_names_the_three_ways(offline):
    with pytest.raises(DataNotFoundError) as exc:
        data.load_cifar10(None)
    message = str(exc.value)
    assert "--data-dir" in message and "CIFAR10_DIR" in message and "Keras cache" in message
    assert "\n" not in message


def test_a_path_without_data_is_refused(tmp_path):
    with pytest.raises(DataNotFoundError, match="holds no CIFAR-10 data"):
        data.load_cifar10(tmp_path, download=False)


class _Exploit:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_malicious_pickle_is_rejected_without_running_code(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    d = write_cifar_dir(tmp_path, per_batch=10, test=10)
    with open(d / "data_batch_1", "wb") as fh:
        pickle.dump({b"data": _Exploit(), b"labels": [0]}, fh, protocol=2)
    with pytest.raises(UnsafePickleError, match=r"data_batch_1.*refusing to load posix.system"):
        data.load_cifar10(tmp_path, download=False)
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize(
    "content, expected",
    [
        (b"", "file is empty"),
        (None, "truncated or corrupt"),  # None: a valid batch cut in half
        (b"not a pickle at all", "truncated or corrupt"),
    ],
)
def test_empty_truncated_and_garbage_files_name_the_file(tmp_path, content, expected):
    d = write_cifar_dir(tmp_path, per_batch=10, test=10)
    target = d / "data_batch_2"
    if content is None:
        content = target.read_bytes()[: target.stat().st_size // 2]
    target.write_bytes(content)
    with pytest.raises(DataFormatError, match=expected) as exc:
        data.load_cifar10(tmp_path, download=False)
    assert "data_batch_2" in str(exc.value)


def test_wrong_shape_and_bad_labels_are_refused(tmp_path):
    d = write_cifar_dir(tmp_path, per_batch=10, test=10)
    with open(d / "test_batch", "wb") as fh:
        pickle.dump({b"data": np.zeros((4, 100), np.uint8), b"labels": [0] * 4}, fh, protocol=2)
    with pytest.raises(DataFormatError, match=r"test_batch: expected data of shape \(N, 3072\)"):
        data.load_cifar10(tmp_path, download=False)
    with open(d / "test_batch", "wb") as fh:
        pickle.dump({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 12]}, fh, protocol=2)
    with pytest.raises(DataFormatError, match=r"labels must lie in 0..9, received 0..12"):
        data.load_cifar10(tmp_path, download=False)


def test_missing_training_batches(tmp_path):
    d = write_cifar_dir(tmp_path, per_batch=10, test=10)
    (d / "data_batch_1").unlink()
    (d / "data_batch_2").unlink()
    with pytest.raises(DataFormatError, match="no training batches"):
        data.load_cifar10(tmp_path, download=False)


def test_missing_test_batch(tmp_path):
    d = write_cifar_dir(tmp_path / "dir", per_batch=10, test=10)
    (d / "test_batch").unlink()
    # a directory without test_batch is not a CIFAR-10 directory at all
    with pytest.raises(DataNotFoundError, match="holds no CIFAR-10 data; expected .* test_batch"):
        data.load_cifar10(tmp_path / "dir", download=False)
    # an archive without it is a damaged release
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(d, arcname="cifar-10-batches-py")
    with pytest.raises(DataFormatError, match="test_batch is missing"):
        data.load_cifar10(archive, download=False)


def test_stratified_indices_are_exact_balanced_and_seeded():
    labels = np.repeat(np.arange(10), [100, 100, 100, 100, 100, 50, 50, 50, 50, 50])
    idx = data.stratified_indices(labels, 75, seed=42)
    assert len(idx) == 75 and len(set(idx)) == 75
    counts = np.bincount(labels[idx], minlength=10)
    assert counts.tolist() == [10] * 5 + [5] * 5  # shares 2/15 and 1/15 of 75, exactly
    np.testing.assert_array_equal(idx, data.stratified_indices(labels, 75, seed=42))
    assert not np.array_equal(idx, data.stratified_indices(labels, 75, seed=7))


def test_train_val_split_is_disjoint_and_stratified():
    x = np.arange(1000)
    y = np.arange(1000) % 10
    (xt, yt), (xv, yv) = data.train_val_split(x, y, 0.1, seed=42)
    assert len(xv) == 100 and len(xt) == 900
    assert set(xt).isdisjoint(xv)
    assert np.bincount(yv).tolist() == [10] * 10


@pytest.mark.real_data
def test_real_shared_data_loads(real_data_dir):
    d = data.load_cifar10(real_data_dir, download=False)
    assert d.x_train.shape == (10_000, 32, 32, 3) and d.x_test.shape == (10_000, 32, 32, 3)
    assert np.bincount(d.y_test).tolist() == [1000] * 10
    assert d.class_names == data.CLASS_NAMES
    assert 100 < d.x_test.mean() < 140  # CIFAR-10's mean pixel is about 121
