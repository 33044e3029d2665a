"""Bring your own model: Keras classifiers this project did not write, with their own input
scaling, output head, size, class count, labels, data and file format, through export, verify,
inspect and serve.

Every model here is made in the test from small data: none was trained by cifar-deploy.
"""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
from typer.testing import CliRunner

from cifar_deploy.cli import app
from cifar_deploy.contract import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    PREPROCESS_MODES,
    Preprocess,
    Signature,
)
from cifar_deploy.data import load_dataset, read_labels
from cifar_deploy.errors import DataFormatError, InvalidModelError, InvalidOptionError
from cifar_deploy.export import ExportOptions, export_model
from tests.helpers import CALIBRATION, write_cifar_dir

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def error_line(result) -> str:
    """The one error line of a refused command (warnings may come before it)."""
    lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, result.stderr
    return lines[0]


def _keras():
    import keras

    return keras


def small_cnn(shape=(32, 32, 3), classes=10, activation="softmax", seed=0, name="user_cnn"):
    """A small classifier of the kind users write, without any normalization layer."""
    keras = _keras()
    keras.utils.set_random_seed(seed)
    layers = keras.layers
    inputs = keras.Input(shape)
    x = layers.Conv2D(8, 3, strides=2, activation="relu")(inputs)
    x = layers.GlobalAveragePooling2D()(x)
    outputs = layers.Dense(classes, activation=activation)(x)
    return keras.Model(inputs, outputs, name=name)


# ---------------------------------------------------------------------------------------------
# The declared preprocessing: the same arithmetic as the conventions it names


@pytest.mark.parametrize("mode", ["tf", "torch", "caffe"])
def test_each_named_mode_is_keras_applications_preprocess_input(mode):
    from keras.applications import imagenet_utils

    images = np.random.default_rng(0).uniform(0, 255, (4, 8, 8, 3)).astype(np.float32)
    expected = imagenet_utils.preprocess_input(images.copy(), mode=mode)
    # float32 arithmetic folded into one scale and offset: ~1e-5 of values up to ~150
    np.testing.assert_allclose(Preprocess(mode)(images), expected, atol=1e-4)


def test_unit_with_mean_and_std_is_the_seed_scripts_normalization():
    images = np.random.default_rng(1).uniform(0, 255, (4, 8, 8, 3)).astype(np.float32)
    expected = (images / 255.0 - np.array(CIFAR10_MEAN)) / np.array(CIFAR10_STD)
    got = Preprocess("unit", CIFAR10_MEAN, CIFAR10_STD)(images)
    np.testing.assert_allclose(got, expected, atol=1e-5)  # float32 of values within +-2.1


def test_raw_changes_nothing_and_round_trips_through_a_sidecar_dict():
    images = np.arange(12, dtype=np.float32).reshape(1, 2, 2, 3)
    assert Preprocess()(images) is images
    for mode in PREPROCESS_MODES:
        declared = Preprocess(mode, (0.1, 0.2, 0.3), (0.4, 0.5, 0.6))
        assert Preprocess.from_dict(json.loads(json.dumps(declared.to_dict()))) == declared


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"mode": "imagenet"}, "--preprocess must be one of: raw, unit, tf, torch, caffe"),
        ({"mode": "unit", "mean": (0.5, 0.5)}, "--mean takes three finite numbers"),
        ({"mode": "unit", "std": (0.5, 0.0, 0.5)}, "--std values must be positive"),
        ({"mode": "unit", "mean": (0.5, float("nan"), 0.5)}, "--mean takes three finite"),
    ],
)
def test_a_bad_declaration_is_refused_naming_what_was_received(kwargs, message):
    with pytest.raises(InvalidOptionError, match=message.replace("(", r"\(")):
        Preprocess(**kwargs)


def test_mean_without_a_mode_is_refused_at_the_command_line(tmp_path):
    model = tmp_path / "m.keras"
    small_cnn().save(model)
    result = invoke("export", "--model", model, "--format", "onnx", "--mean", "0.5,0.5,0.5")
    assert result.exit_code == 2
    assert "--mean and --std apply after a --preprocess mode" in error_line(result)


# ---------------------------------------------------------------------------------------------
# Outputs: probabilities, or a logits head with --add-softmax


@pytest.fixture
def logits_model(tmp_path):
    path = tmp_path / "logits.keras"
    small_cnn(activation=None, name="logits").save(path)
    return path


def test_a_logits_head_is_refused_without_add_softmax_and_nothing_is_written(
    logits_model, tmp_path
):
    out = tmp_path / "out"
    result = invoke("export", "--model", logits_model, "--format", "all", "--out", out)
    assert result.exit_code == 2
    line = error_line(result)
    assert "outputs are not probabilities" in line and "--add-softmax" in result.stderr
    assert not out.exists()


def test_add_softmax_ends_every_graph_in_a_softmax_and_verify_compares_like_for_like(
    logits_model, tmp_path, cifar_dir
):
    out = tmp_path / "out"
    options = ExportOptions(add_softmax=True, data_dir=cifar_dir, calibration_images=CALIBRATION)
    artifacts = export_model(
        logits_model, [(f, q) for f, q in _targets("onnx", "tflite")], options, out
    )
    assert all(a.status == "ok" for a in artifacts), [a.error for a in artifacts]
    assert all(a.metadata.added_softmax for a in artifacts)
    from cifar_deploy.runtime.predictors import load_predictor

    images = CALIBRATION[:8]
    logits = np.asarray(_keras().saving.load_model(logits_model)(images.astype(np.float32)))
    softmax = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    onnx = load_predictor(out / "logits_float32.onnx").predict(images)
    np.testing.assert_allclose(onnx, softmax, atol=1e-5)  # float32, different kernels
    # The float artifacts against the Keras model with the same softmax (an untrained model's
    # int8 argmax is a coin toss among near-equal probabilities: not a parity question).
    floats = [a.path for a in artifacts if a.quantization in ("none", "float16")]
    result = invoke("verify", *floats, "--data-dir", cifar_dir, "--json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [r["status"] for r in rows] == ["reference"] + ["pass"] * len(floats)


def test_add_softmax_on_a_model_that_outputs_probabilities_is_refused(tmp_path):
    model = tmp_path / "probs.keras"
    small_cnn().save(model)
    result = invoke("export", "--model", model, "--format", "onnx", "--add-softmax")
    assert result.exit_code == 2
    assert "already outputs probabilities" in error_line(result)


def _targets(*names):
    """Every quantization of the named formats but dynamic range, which leaves the weights of
    a model this small in float (the converter skips tensors under 1,024 values)."""
    from cifar_deploy.export import every_quantization

    return [(f, q) for f, q in every_quantization(list(names)) if q != "dynamic"]


# ---------------------------------------------------------------------------------------------
# The preprocessing check on real images (synthetic CIFAR-10 that a colour tells apart)


def _train_normalized(cifar_dir, preprocess: Preprocess, epochs=12):
    """A small model trained on images scaled by ``preprocess`` outside the model, as the
    original project's scripts do."""
    data = load_dataset(cifar_dir, download=False)
    model = small_cnn(seed=3, name="normalized")
    model.compile("adam", "sparse_categorical_crossentropy")
    x = preprocess(data.x_train.astype(np.float32))
    model.fit(x, data.y_train, epochs=epochs, batch_size=16, verbose=0)
    return model


@pytest.fixture(scope="module")
def normalized_model(tmp_path_factory):
    root = tmp_path_factory.mktemp("normalized")
    write_cifar_dir(root / "data", per_batch=100)
    declared = Preprocess("unit", CIFAR10_MEAN, CIFAR10_STD)
    model = _train_normalized(root / "data", declared)
    model.save(root / "normalized.keras")
    return root / "normalized.keras", root / "data", declared


def test_a_model_normalized_outside_is_refused_with_the_flag_that_works(normalized_model, tmp_path):
    model, data, declared = normalized_model
    out = tmp_path / "out"
    result = invoke("export", "--model", model, "--format", "all", "--data-dir", data, "--out", out)
    assert result.exit_code == 2, result.output
    line = error_line(result)
    assert "on raw pixels" in line and "--preprocess raw to export anyway" in line
    assert declared.flags() in line or "--preprocess torch" in line  # ImageNet's std is close
    assert not out.exists()


def test_with_the_declaration_every_artifact_takes_raw_pixels(normalized_model, tmp_path):
    model, data, declared = normalized_model
    out = tmp_path / "out"
    options = ExportOptions(preprocess=declared, data_dir=data, calibration_images=CALIBRATION)
    artifacts = export_model(model, [(f, q) for f, q in _targets("onnx", "tflite")], options, out)
    assert all(a.status == "ok" for a in artifacts), [a.error for a in artifacts]
    sidecar = artifacts[0].metadata
    assert sidecar.declared_preprocess == declared and "raw RGB pixels" in sidecar.preprocessing
    from cifar_deploy.runtime.predictors import load_predictor

    images = load_dataset(data, download=False).x_test[:16]
    keras_model = _keras().saving.load_model(model)
    expected = np.asarray(keras_model(declared(images.astype(np.float32))))
    got = load_predictor(out / "normalized_float32.onnx").predict(images)
    np.testing.assert_allclose(got, expected, atol=1e-5)  # float32, different kernels


def test_an_explicit_declaration_is_the_users_word(normalized_model, tmp_path):
    model, data, _ = normalized_model
    result = invoke(
        "export", "--model", model, "--format", "onnx", "--quantize", "none",
        "--data-dir", data, "--out", tmp_path / "out", "--preprocess", "raw",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "exporting with --preprocess raw as declared" in result.stderr


def test_without_data_the_preprocessing_is_not_checked_and_says_so(tmp_path):
    model = tmp_path / "m.keras"
    small_cnn().save(model)
    result = invoke("export", "--model", model, "--format", "onnx", "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert "preprocessing was not checked" in result.stderr


@pytest.fixture(scope="module")
def bare_onnx(normalized_model, tmp_path_factory):
    """The normalized model's float32 ONNX, exported with its declaration, then stripped of
    its sidecar: what a user holds who converted the model elsewhere."""
    model, data, declared = normalized_model
    out = tmp_path_factory.mktemp("bare")
    options = ExportOptions(preprocess=declared, data_dir=data)
    (artifact,) = export_model(model, _targets("onnx")[:1], options, out)
    artifact.path.with_name(artifact.path.name + ".json").unlink()
    return artifact.path


def _verify_json(*args):
    result = invoke("verify", *args, "--json")
    return result, (json.loads(result.stdout) if result.exit_code in (0, 1) else None)


def test_verify_applies_a_declaration_to_a_keras_reference_that_no_sidecar_describes(
    normalized_model, bare_onnx
):
    model, data, declared = normalized_model
    flags = declared.flags().split()
    result, rows = _verify_json(bare_onnx, "--reference", model, "--data-dir", data, *flags)
    assert result.exit_code == 0, result.output
    assert rows[1]["agreement"] == 1.0 and rows[1]["status"] == "pass"
    # without the declaration, the raw-pixel reference disagrees with the artifact
    undeclared, rows = _verify_json(bare_onnx, "--reference", model, "--data-dir", data)
    assert undeclared.exit_code == 1 and rows[1]["status"] == "fail"


def test_bench_runs_a_bare_keras_model_with_its_declaration(normalized_model):
    model, _, declared = normalized_model
    args = ("bench", model, "--batch-sizes", "1", "--min-time", "0", "--min-runs", "1")
    result = invoke(*args, "--warmup", "0", "--json", *declared.flags().split())
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)["rows"]
    assert rows and all(r["status"] == "ok" for r in rows)


def test_a_declaration_that_contradicts_the_sidecars_is_refused(normalized_model, tmp_path):
    model, data, declared = normalized_model
    out = tmp_path / "out"
    options = ExportOptions(preprocess=declared, data_dir=data)
    export_model(model, _targets("onnx")[:1], options, out)
    result = invoke("verify", out, "--data-dir", data, "--preprocess", "tf")
    assert result.exit_code == 2, result.output
    line = error_line(result)
    assert "received --preprocess tf, but the artifacts' sidecars declare" in line
    assert declared.flags() in line


# ---------------------------------------------------------------------------------------------
# Any size and class count: a 64x64, 100-class model with a labels file and an image folder


def write_image_folder(root, classes, per_class=2, size=(40, 50), seed=0):
    from PIL import Image

    rng = np.random.default_rng(seed)
    for c in range(classes):
        folder = root / f"class_{c:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"{i}.{'png' if i % 2 else 'jpg'}")
    return root


@pytest.fixture(scope="module")
def big_model(tmp_path_factory):
    """A 64x64, 100-class model exported to TFLite int8, ONNX and Triton, with a labels file
    and an image folder of 100 classes."""
    root = tmp_path_factory.mktemp("big")
    model = root / "big100.keras"
    keras = _keras()
    keras.utils.set_random_seed(0)
    inputs = keras.Input((64, 64, 3))
    x = keras.layers.Rescaling(1 / 255)(inputs)  # its own normalization, inside: raw input
    x = keras.layers.Conv2D(8, 3, strides=4, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(100, activation="softmax")(x)
    keras.Model(inputs, outputs, name="big100").save(model)
    labels = root / "labels.txt"
    labels.write_text("".join(f"species_{i}\n" for i in range(100)))
    folder = write_image_folder(root / "images", 100, per_class=1)
    out = root / "exports"
    result = invoke(
        "export", "--model", model, "--format", "all", "--labels", labels,
        "--data-dir", folder, "--out", out, "--json",
    )  # fmt: skip
    rows = json.loads(result.stdout)
    return {"model": model, "labels": labels, "folder": folder, "out": out, "rows": rows}


def test_a_64x64_100_class_model_exports_with_its_own_size_and_labels(big_model):
    ok = {(r["format"], r["quantization"]) for r in big_model["rows"] if r["status"] == "ok"}
    assert {("tflite", "int8"), ("onnx", "none"), ("onnx", "int8"), ("triton", "none")} <= ok
    sidecar = next(r for r in big_model["rows"] if r["format"] == "onnx")["metadata"]
    assert sidecar["input"]["shape"] == [None, 64, 64, 3]
    assert sidecar["output"]["shape"] == [None, 100]
    assert sidecar["class_names"] == read_labels(big_model["labels"])
    out = big_model["out"]
    assert (out / "labels.txt").read_text().splitlines() == sidecar["class_names"]
    config = (out / "triton" / "big100" / "config.pbtxt").read_text()
    assert "dims: [ 64, 64, 3 ]" in config and "dims: [ 100 ]" in config


def test_inspect_shows_the_models_size_and_its_100_labels(big_model):
    result = invoke("inspect", big_model["out"] / "big100_int8.tflite", "--json")
    assert result.exit_code == 0, result.output
    meta = json.loads(result.stdout)["metadata"]
    assert meta["image_size"] == [64, 64]
    assert meta["labels"][:2] == ["species_0", "species_1"] and len(meta["labels"]) == 100


def test_verify_runs_on_the_image_folder_and_refuses_data_of_another_class_count(
    big_model, cifar_dir
):
    out = big_model["out"]
    result = invoke(
        "verify", out / "big100_float32.onnx", "--data-dir", big_model["folder"], "--json"
    )
    assert result.exit_code == 0, result.output
    assert [r["samples"] for r in json.loads(result.stdout)] == [100, 100]
    result = invoke("verify", out / "big100_float32.onnx", "--data-dir", cifar_dir)
    assert result.exit_code == 2
    assert "has 10 classes, but the model outputs 100" in error_line(result)


def test_the_server_follows_the_model(big_model):
    import io

    import requests
    from PIL import Image

    from cifar_deploy.runtime.predictors import load_predictor
    from cifar_deploy.serving.server import build_server_app
    from tests.helpers import serving

    name = "big100_int8"
    predictor = load_predictor(big_model["out"] / "big100_int8.tflite")
    with serving(build_server_app(predictor, name, max_queue_delay_ms=0)) as address:
        base = f"http://{address}"
        meta = requests.get(f"{base}/v2/models/{name}", timeout=30).json()
        assert meta["inputs"][0]["shape"] == [-1, 64, 64, 3]
        assert meta["outputs"][0]["shape"] == [-1, 100]
        tensor = {"name": "images", "datatype": "UINT8", "shape": [1, 64, 64, 3]}
        body = {"inputs": [{**tensor, "data": [7] * (64 * 64 * 3)}]}
        answer = requests.post(f"{base}/v2/models/{name}/infer", json=body, timeout=30)
        assert answer.status_code == 200, answer.text
        assert answer.json()["outputs"][0]["shape"] == [1, 100]
        small = {"inputs": [{**tensor, "shape": [1, 32, 32, 3], "data": [7] * 3072}]}
        refused = requests.post(f"{base}/v2/models/{name}/infer", json=small, timeout=30)
        assert refused.status_code == 400
        assert "expected shape [N, 64, 64, 3]" in refused.json()["error"]
        png = io.BytesIO()
        Image.new("RGB", (300, 200), (200, 10, 10)).save(png, format="PNG")
        files = {"file": ("x.png", png.getvalue(), "image/png")}
        top = requests.post(f"{base}/v1/classify?top=5", files=files, timeout=30).json()
        labels = [p["label"] for p in top["predictions"]]
        assert len(labels) == 5 and all(label.startswith("species_") for label in labels)


def test_a_labels_file_with_another_count_is_refused_naming_both(tmp_path):
    model = tmp_path / "m.keras"
    small_cnn().save(model)
    labels = tmp_path / "labels.txt"
    labels.write_text("a\nb\nc\n")
    result = invoke("export", "--model", model, "--format", "onnx", "--labels", labels)
    assert result.exit_code == 2
    assert "--labels names 3 classes, but" in error_line(result) and "outputs 10" in error_line(
        result
    )


@pytest.mark.parametrize(
    "text, message",
    [("", "at least two"), ("a\n\nb\n", "none blank"), ("a\nb\na\n", "class names repeat (a)")],
)
def test_a_bad_labels_file_is_one_clear_line(tmp_path, text, message):
    path = tmp_path / "labels.txt"
    path.write_text(text)
    with pytest.raises(DataFormatError, match=message.replace("(", r"\(").replace(")", r"\)")):
        read_labels(path)


def test_a_model_that_is_no_image_classifier_is_refused_naming_its_shapes(tmp_path):
    keras = _keras()
    inputs = keras.Input((16,))
    path = tmp_path / "tabular.keras"
    keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(inputs)).save(path)
    result = invoke("export", "--model", path, "--format", "onnx")
    assert result.exit_code == 2
    assert "expected an image classifier from (N, H, W, 3)" in error_line(result)
    assert "(None, 16) -> (None, 3)" in error_line(result)


# ---------------------------------------------------------------------------------------------
# Data: CIFAR-100's python release, image folders and what a bad folder gets


def write_cifar100(root, train=200, test=100, seed=0):
    rng = np.random.default_rng(seed)
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    for name, count in (("train", train), ("test", test)):
        labels = [int(v) for v in np.arange(count) % 100]
        pixels = rng.integers(0, 256, (count, 3072), dtype=np.uint8)
        payload = {b"data": pixels, b"fine_labels": labels, b"coarse_labels": [0] * count}
        (folder / name).write_bytes(pickle.dumps(payload, protocol=2))
    names = [f"fine_{i}".encode() for i in range(100)]
    (folder / "meta").write_bytes(pickle.dumps({b"fine_label_names": names}, protocol=2))
    return root


def test_cifar100_reads_its_fine_labels_and_100_names(tmp_path):
    data = load_dataset(write_cifar100(tmp_path), download=False, size=(40, 40))
    assert len(data.class_names) == 100 and data.class_names[7] == "fine_7"
    assert data.x_train.shape == (200, 40, 40, 3) and data.y_test.max() == 99


def test_an_image_folder_is_read_per_class_and_resized_to_the_model(tmp_path):
    data = load_dataset(write_image_folder(tmp_path / "f", 3), download=False, size=(24, 20))
    assert data.class_names == ("class_000", "class_001", "class_002")
    assert data.x_train.shape == (6, 24, 20, 3) and data.y_train.tolist() == [0, 0, 1, 1, 2, 2]


def test_an_image_folder_with_train_and_test_keeps_them_apart(tmp_path):
    write_image_folder(tmp_path / "f" / "train", 2, per_class=3)
    write_image_folder(tmp_path / "f" / "test", 2, per_class=1, seed=1)
    data = load_dataset(tmp_path / "f", download=False)
    assert len(data.y_train) == 6 and len(data.y_test) == 2


def _one_class(root):
    return write_image_folder(root, 1)


def _empty_class(root):
    write_image_folder(root, 2)
    (root / "class_002").mkdir()
    return root


def _unreadable(root):
    write_image_folder(root, 2)
    (root / "class_001" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    return root


@pytest.mark.parametrize(
    "make, message",
    [
        (_one_class, "holds 1 class folder(s)"),
        (_empty_class, "no JPEG or PNG images in the class folder(s) class_002"),
        (_unreadable, "broken.png: not a decodable PNG or JPEG image"),
    ],
)
def test_a_bad_image_folder_is_one_line_and_exit_2(tmp_path, make, message):
    folder = make(tmp_path / "f")
    model = tmp_path / "m.keras"
    small_cnn().save(model)
    result = invoke("export", "--model", model, "--format", "onnx", "--data-dir", folder)
    assert result.exit_code == 2, result.output
    assert message in error_line(result)


def test_an_empty_folder_is_no_data_set(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(Exception, match="holds no data set"):
        load_dataset(tmp_path / "empty", download=False)


# ---------------------------------------------------------------------------------------------
# Models from elsewhere: keras.applications, and Keras 2 files written by tf_keras


@pytest.mark.slow  # the fast loop (-m 'not slow') leaves it to CI
def test_keras_applications_mobilenetv3small_exports_and_verifies(tmp_path, cifar_dir):
    keras = _keras()
    keras.utils.set_random_seed(0)
    model = keras.applications.MobileNetV3Small(
        input_shape=(32, 32, 3), weights=None, classes=10, minimalistic=True
    )  # include_preprocessing: it rescales raw pixels itself
    path = tmp_path / "mnv3.keras"
    model.save(path)
    out = tmp_path / "out"
    options = ExportOptions(data_dir=cifar_dir, calibration_images=CALIBRATION)
    artifacts = export_model(
        path, [(f, q) for f, q in _targets("onnx") if q != "int8"], options, out
    )
    assert all(a.status == "ok" for a in artifacts), [a.error for a in artifacts]
    result = invoke("verify", out, "--data-dir", cifar_dir, "--json")
    assert result.exit_code == 0, result.output


@pytest.fixture(scope="module")
def tf_keras_files(tmp_path_factory):
    """A small CNN saved by tf_keras (Keras 2) as .h5 and .keras, and the probabilities it gives
    on a few images, written in a subprocess so that its Keras 2 state stays out of ours."""
    pytest.importorskip("tf_keras", reason="tf-keras (the dev extra) is not installed")
    import subprocess
    import sys

    root = tmp_path_factory.mktemp("tf_keras")
    script = f"""
import numpy as np, tf_keras as k
k.utils.set_random_seed(0)
m = k.Sequential([k.layers.Input((32, 32, 3)), k.layers.Rescaling(1 / 255),
                  k.layers.Conv2D(4, 3, activation="relu"), k.layers.GlobalAveragePooling2D(),
                  k.layers.Dense(10, activation="softmax")])
m.save(r"{root}/keras2.h5"); m.save(r"{root}/keras2.keras")
x = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3)).astype("float32")
np.save(r"{root}/x.npy", x); np.save(r"{root}/p.npy", m.predict(x, verbose=0))
"""
    subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, timeout=300)
    return root


@pytest.mark.parametrize("name", ["keras2.h5", "keras2.keras"])
def test_keras2_files_written_by_tf_keras_export(tf_keras_files, tmp_path, name):
    out = tmp_path / "out"
    result = invoke("export", "--model", tf_keras_files / name, "--format", "onnx", "--out", out)
    assert result.exit_code == 0, result.output
    from cifar_deploy.runtime.predictors import load_predictor

    x = np.load(tf_keras_files / "x.npy")
    got = load_predictor(next(out.glob("*_float32.onnx"))).predict(x)
    np.testing.assert_allclose(got, np.load(tf_keras_files / "p.npy"), atol=1e-5)


def test_a_lambda_layer_stays_refused(tmp_path):
    keras = _keras()
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Lambda(lambda t: t / 255.0)(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    path = tmp_path / "lambda.keras"
    keras.Model(inputs, keras.layers.Dense(10, activation="softmax")(x)).save(path)
    result = invoke("export", "--model", path, "--format", "onnx")
    assert result.exit_code == 2
    assert "Lambda layer" in error_line(result)


def test_the_signature_of_a_model_is_read_from_its_shapes():
    assert Signature.of_shapes((None, 64, 48, 3), (None, 100), "m") == Signature(64, 48, 100)
    with pytest.raises(InvalidModelError, match="received"):
        Signature.of_shapes((None, None, None, 3), (None, 10), "m")


# ---------------------------------------------------------------------------------------------
# The seed-style model on the real data, as a new user takes it through the CLI


@pytest.mark.slow
@pytest.mark.real_data
def test_a_seed_style_model_is_refused_without_its_scaling_and_exports_faithfully_with_it(
    real_data_dir, tmp_path
):
    """benchmarks/byom.py, which prints README's figures, on 2,000 test images: trained with
    normalization outside the model, refused without --preprocess (nothing written), then every
    artifact within 1 point of the normalized Keras model, and MediaPipe on raw pixels agreeing
    with LiteRT."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "byom.py"
    args = ["--data-dir", real_data_dir, "--out", tmp_path, "--epochs", "2", "--samples", "2000"]
    done = subprocess.run(
        [sys.executable, str(script), *map(str, args), "--json"], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    record = json.loads(done.stdout)
    model = record["model"]
    assert model["normalized_accuracy"] > model["raw_accuracy"] + 0.2, model
    refused = record["without_flags"]
    assert refused["exit_code"] == 2 and not refused["written"], refused
    assert "on raw pixels" in refused["error"] and "--preprocess" in refused["error"]
    assert record["artifacts"] == 10 and record["verify_exit_code"] == 0
    reference, *rows = record["rows"]
    assert reference["status"] == "reference"
    assert len(rows) == 10 + 4  # every artifact, and MediaPipe on each .tflite
    for row in rows:
        assert row["status"] == "pass" and abs(row["accuracy_diff"]) <= 1.0, row
    mediapipe = [r for r in rows if r["runtime"].startswith("mediapipe")]
    assert len(mediapipe) == 4 and all(r["agreement"] >= 0.99 for r in mediapipe), mediapipe
