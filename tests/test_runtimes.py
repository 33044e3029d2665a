"""Specification of the runtimes: one predictor per artifact kind, each like its Keras model."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

from cifar_deploy import _tf
from cifar_deploy.errors import DeviceUnavailableError, InvalidModelError, InvalidOptionError
from cifar_deploy.export import ExportOptions, export_formats, export_model
from cifar_deploy.runtime import PREDICTORS, check_images, load_predictor
from tests.helpers import CALIBRATION, TOLERANCE

TARGETS = [(f.name, q) for f in export_formats() for q in f.quantizations]
IMAGES = np.random.default_rng(5).integers(0, 256, size=(9, 32, 32, 3), dtype=np.uint8)
KIND = {
    "savedmodel": "savedmodel",
    "tflite": "tflite",
    "onnx": "onnx",
    "triton": "onnx",
    "triton-python": "triton-python",
}


@pytest.fixture(scope="module")
def model_path(tiny_model):
    return tiny_model


@pytest.fixture(scope="module")
def artifacts(tiny_exports):
    return {key: a.path for key, a in tiny_exports.items()}


@pytest.fixture(scope="module")
def keras_probs(model_path):
    return load_predictor(model_path).predict(IMAGES)


def test_keras_predictor_equals_a_direct_model_call(model_path, keras_probs):
    keras = _tf.keras()
    direct = keras.models.load_model(model_path)(IMAGES.astype(np.float32), training=False)
    np.testing.assert_allclose(keras_probs, np.asarray(direct), atol=1e-6)


@pytest.mark.parametrize("fmt, quantization", TARGETS)
def test_each_predictor_matches_keras(artifacts, keras_probs, fmt, quantization):
    predictor = load_predictor(artifacts[(fmt, quantization)])
    assert predictor.kind == KIND[fmt] and predictor.device == "cpu"
    assert predictor.metadata.quantization == quantization
    probs = predictor.predict(IMAGES)
    assert probs.shape == (9, 10) and probs.dtype == np.float32
    assert np.abs(probs - keras_probs).max() <= TOLERANCE[quantization]


@pytest.mark.parametrize(
    "fmt, quantization", [("tflite", "int8"), ("tflite", "none"), ("onnx", "none")]
)
def test_batch_size_and_input_dtype_do_not_change_results(artifacts, fmt, quantization):
    predictor = load_predictor(artifacts[(fmt, quantization)])
    whole = predictor.predict(IMAGES)
    in_pieces = predictor.predict(IMAGES, batch_size=4)  # batches of 4, 4, 1: the input resizes
    as_float = predictor.predict(IMAGES.astype(np.float32))
    np.testing.assert_allclose(in_pieces, whole, atol=1e-6)
    np.testing.assert_allclose(as_float, whole, atol=1e-6)


def test_tflite_int8_quantizes_input_with_the_sidecar_scale(model_path, artifacts, tmp_path):
    options = ExportOptions(calibration_images=CALIBRATION, io_type="int8")
    (art,) = export_model(model_path, "tflite", options, tmp_path)
    predictor = load_predictor(art.path)
    assert predictor.metadata.input.zero_point == -128  # uint8 pixels must be shifted by -128
    uint8_input = load_predictor(artifacts[("tflite", "int8")]).predict(IMAGES)
    np.testing.assert_allclose(predictor.predict(IMAGES), uint8_input, atol=0.03)


def test_the_tflite_predictor_passes_explicit_threads_to_litert(artifacts, monkeypatch):
    from ai_edge_litert import interpreter as litert

    seen = []
    real = litert.Interpreter

    def recording(*args, **kwargs):
        seen.append(kwargs.get("num_threads"))
        return real(*args, **kwargs)

    monkeypatch.setattr(litert, "Interpreter", recording)
    assert load_predictor(artifacts[("tflite", "int8")], threads=1).threads == 1
    assert load_predictor(artifacts[("tflite", "int8")]).threads == os.cpu_count()
    # Every interpreter (the predictors', and the one-thread reads of the tensor types at load)
    # gets an explicit count, never LiteRT's own default of one thread.
    assert None not in seen and seen[-1] == os.cpu_count()


@pytest.mark.parametrize(
    "bad, message",
    [
        (np.zeros((32, 32)), r"expected images of shape \(N, 32, 32, 3\), received \(32, 32\)"),
        (np.zeros((2, 28, 28, 3)), r"received \(2, 28, 28, 3\)"),
        (
            np.array([["a"] * 3] * 32 * 32 * 2).reshape(2, 32, 32, 3),
            "expected uint8 or float pixels",
        ),
    ],
)
def test_bad_image_batches_are_refused(bad, message):
    with pytest.raises(InvalidOptionError, match=message):
        check_images(bad)


def test_a_sidecar_that_does_not_match_its_artifact_is_refused(artifacts, tmp_path):
    src = artifacts[("onnx", "none")]
    copy = tmp_path / src.name
    shutil.copy(src, copy)
    shutil.copy(src.with_name(src.name + ".json"), tmp_path / (src.name + ".json"))
    data = bytearray(copy.read_bytes())
    data[-10] ^= 0xFF
    copy.write_bytes(bytes(data))
    with pytest.raises(InvalidModelError, match="does not match its sidecar"):
        load_predictor(copy)


def test_a_truncated_bare_artifact_is_refused(artifacts, tmp_path):
    src = artifacts[("tflite", "none")]
    bad = tmp_path / "cut.tflite"
    bad.write_bytes(src.read_bytes()[:1000])
    with pytest.raises(InvalidModelError, match="not a loadable TFLite model"):
        load_predictor(bad)


def test_unknown_artifact_types_are_refused(tmp_path):
    path = tmp_path / "model.pt"
    path.write_bytes(b"x")
    with pytest.raises(InvalidModelError, match="unknown artifact type"):
        load_predictor(path)


def test_every_artifact_kind_has_a_predictor():
    assert {f.name for f in export_formats()} | {"keras"} == set(PREDICTORS)


def _has_gpu() -> bool:
    return bool(_tf.tf().config.list_physical_devices("GPU"))


@pytest.mark.skipif(_has_gpu(), reason="checks the no-GPU error path")
@pytest.mark.parametrize("fmt", ["onnx", "savedmodel", "tflite"])
def test_asking_for_a_missing_gpu_is_an_error_not_a_cpu_fallback(artifacts, fmt):
    with pytest.raises(DeviceUnavailableError, match="--device gpu"):
        load_predictor(artifacts[(fmt, "none")], device="gpu")


@pytest.mark.gpu
@pytest.mark.skipif(not _has_gpu(), reason="needs a CUDA GPU")
def test_onnx_on_the_gpu_matches_the_cpu(artifacts):
    gpu = load_predictor(artifacts[("onnx", "none")], device="gpu")
    assert gpu.provider == "CUDAExecutionProvider"
    cpu = load_predictor(artifacts[("onnx", "none")])
    np.testing.assert_allclose(gpu.predict(IMAGES), cpu.predict(IMAGES), atol=1e-5)


@pytest.mark.parametrize("fmt, quantization", [("tflite", "int8"), ("onnx", "none")])
def test_results_do_not_alias_the_runtime_buffers(artifacts, fmt, quantization):
    predictor = load_predictor(artifacts[(fmt, quantization)])
    first = predictor.predict(IMAGES[:1])
    kept = first.copy()
    predictor.predict(IMAGES[1:2])  # a second call must not overwrite the first answer
    np.testing.assert_array_equal(first, kept)


def test_a_bare_artifact_gets_a_record_built_from_the_file(artifacts, tmp_path):
    src = artifacts[("tflite", "int8")]
    bare = tmp_path / "bare.tflite"
    shutil.copy(src, bare)  # no sidecar beside it
    predictor = load_predictor(bare)
    meta = predictor.metadata
    assert (meta.from_sidecar, meta.format, meta.model_name, meta.source) == (
        False,
        "tflite",
        "bare",
        None,
    )
    assert predictor.class_names[3] == "cat" and meta.artifact.size_bytes == src.stat().st_size
    # the input quantization comes from the file itself: same answers as with the sidecar
    np.testing.assert_array_equal(predictor.predict(IMAGES), load_predictor(src).predict(IMAGES))
