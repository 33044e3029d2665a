"""Specification of mobile-ready TFLite: embedded metadata, the MediaPipe consumer check,
`cifar-deploy inspect` and static-batch exports."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from cifar_deploy.checks.consumers import MediaPipeConsumer
from cifar_deploy.checks.verify import verify
from cifar_deploy.cli import app
from cifar_deploy.contract import CLASS_NAMES
from cifar_deploy.data import load_cifar10
from cifar_deploy.export import ExportOptions, export_model
from cifar_deploy.export import tflite as tflite_format
from cifar_deploy.export.tflite_metadata import read_metadata
from cifar_deploy.runtime import load_predictor
from tests.helpers import CALIBRATION

runner = CliRunner()
TFLITE = ["none", "float16", "dynamic", "int8"]
PROBE = np.random.default_rng(3).integers(0, 256, size=(16, 32, 32, 3), dtype=np.uint8)


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.mark.parametrize("quantization", TFLITE)
def test_every_tflite_carries_metadata_a_mobile_library_reads(tiny_exports, quantization):
    artifact = tiny_exports[("tflite", quantization)]
    meta = read_metadata(artifact.path.read_bytes())
    assert meta is not None and meta.name == "cnn" and meta.min_parser_version == "1.0.0"
    assert meta.labels == list(CLASS_NAMES) and meta.label_file == "labels.txt"
    assert (meta.color_space, meta.image_size, meta.input_range) == ("RGB", (32, 32), (0, 255))
    # the graph takes raw pixels and normalizes inside: a consumer must feed them unchanged
    assert meta.normalization_mean == [0.0] * 3 and meta.normalization_std == [1.0] * 3
    assert artifact.metadata.extra["embedded_metadata"]["bytes"] > 500
    assert (artifact.path.parent / "labels.txt").read_text().split() == list(CLASS_NAMES)


@pytest.mark.slow  # the fast loop (-m 'not slow') leaves it to CI
@pytest.mark.parametrize("quantization", ["none", "int8"])
def test_metadata_leaves_the_outputs_bit_identical(tiny_model, tmp_path, monkeypatch, quantization):
    options = ExportOptions(quantization=quantization, calibration_images=CALIBRATION)
    (shipped,) = export_model(tiny_model, "tflite", options, tmp_path / "with")
    monkeypatch.setattr(tflite_format, "embed", lambda model, metadata, names: model)
    (bare,) = export_model(tiny_model, "tflite", options, tmp_path / "without")
    assert read_metadata(bare.path.read_bytes()) is None
    assert shipped.size_bytes > bare.size_bytes
    with_meta = load_predictor(shipped.path).predict(PROBE)
    without = load_predictor(bare.path).predict(PROBE)
    np.testing.assert_array_equal(with_meta, without)


@pytest.mark.real_data
@pytest.mark.parametrize("quantization", TFLITE)
def test_mediapipe_answers_like_litert_with_the_class_names(
    tiny_exports, real_data_dir, quantization
):
    artifact = tiny_exports[("tflite", quantization)]
    images = load_cifar10(real_data_dir, download=False).x_test[:300]
    ours = load_predictor(artifact.path).predict(images)
    consumer = MediaPipeConsumer(artifact.path, 10)
    try:
        out = consumer.run(images)
    finally:
        consumer.close()
    assert out.category_names == list(CLASS_NAMES)
    np.testing.assert_array_equal(out.probabilities.argmax(1), ours.argmax(1))
    # same interpreter underneath: the scores are ours, not approximately ours
    assert np.abs(out.probabilities - ours).max() <= 1e-6


def test_verify_adds_a_mediapipe_row_per_loadable_tflite(tiny_exports, cifar_dir):
    paths = [tiny_exports[("tflite", q)].path for q in ("none", "int8")]
    paths.append(tiny_exports[("onnx", "none")].path)
    rows = verify(paths, data_dir=cifar_dir, consumers=["mediapipe"])
    consumer_rows = [r for r in rows if r.runtime.startswith("mediapipe")]
    assert [r.name for r in consumer_rows] == ["cnn_float32.tflite", "cnn_int8.tflite"]
    assert all(r.status == "pass" and r.agreement == 1.0 for r in consumer_rows), rows


def test_an_int8_input_model_is_not_offered_to_mediapipe(tiny_model, tmp_path, caplog):
    options = ExportOptions(quantization="int8", io_type="int8", calibration_images=CALIBRATION)
    (art,) = export_model(tiny_model, "tflite", options, tmp_path)
    assert "MediaPipe Tasks, the TFLite Task Library and ML Kit load uint8" in caplog.text
    assert MediaPipeConsumer.accepts(art.metadata).endswith("this model takes int8")
    assert art.metadata.extra["mobile_consumers"] is False


def test_inspect_reports_what_a_mobile_engineer_checks(tiny_exports):
    path = tiny_exports[("tflite", "int8")].path
    result = invoke("inspect", path, "--threads", 1, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    (inp,) = report["inputs"]
    assert inp["dtype"] == "uint8" and inp["shape_signature"] == [-1, 32, 32, 3]
    assert report["dynamic_batch"] is True and report["float_ops"] == []
    assert report["ops"]["CONV_2D (int8)"] == 3 and report["ops"]["DEQUANTIZE (float32)"] == 1
    assert report["metadata"]["labels"] == list(CLASS_NAMES)
    assert report["consumers"]["MediaPipe Tasks"] == "yes"
    assert report["consumers"]["NPU compilers"].startswith("no: dynamic batch")
    assert report["xnnpack_delegated"] is True and "SOFTMAX" in report["not_delegated"]
    assert report["activation_bytes"] > 32 * 32 * 3
    assert report["latency_ms"]["native CompiledModel"] > 0
    assert report["latency_ms"]["python predictor"] > 0
    assert report["gpu_delegate"].startswith("not checked")


def test_inspect_finds_float_operators_in_a_float_model(tiny_exports):
    result = invoke("inspect", tiny_exports[("tflite", "none")].path, "--no-latency", "--json")
    report = json.loads(result.stdout)
    assert report["float_ops"] == []  # float_ops lists float math inside quantized models only
    assert report["ops"]["CONV_2D (float32)"] == 3 and report["latency_ms"] == {}
    assert report["consumers"]["Edge TPU"].startswith("no: dynamic batch")


@pytest.mark.parametrize("content", [b"not a model at all", "truncated"])
def test_inspect_refuses_what_is_no_tflite_model_in_one_line(tiny_exports, tmp_path, content):
    path = tmp_path / "bad.tflite"
    good = tiny_exports[("tflite", "int8")].path.read_bytes()
    path.write_bytes(good[:2000] if content == "truncated" else content)
    result = invoke("inspect", path)
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert result.stderr.startswith("error: ") and len(result.stderr.strip().splitlines()) == 1


def test_a_static_batch_export_has_a_fixed_shape_and_calibrates(tiny_model, tiny_exports, tmp_path):
    options = ExportOptions(quantization="int8", static_batch=1, calibration_images=CALIBRATION)
    (art,) = export_model(tiny_model, "tflite", options, tmp_path)
    assert art.path.name == "cnn_int8_b1.tflite" and art.metadata.input.shape == [1, 32, 32, 3]
    assert art.metadata.calibration["samples"] == len(CALIBRATION)
    result = invoke("inspect", art.path, "--no-latency", "--json")
    report = json.loads(result.stdout)
    assert report["inputs"][0]["shape_signature"] == [1, 32, 32, 3]
    assert report["consumers"]["NPU compilers"] == "yes"
    assert report["consumers"]["Edge TPU"].startswith("yes")
    static = load_predictor(art.path).predict(PROBE)  # run one image at a time
    dynamic = load_predictor(tiny_exports[("tflite", "int8")].path).predict(PROBE)
    assert static.shape == (16, 10) and np.abs(static - dynamic).max() <= 0.02
