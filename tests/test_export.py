"""Specification of the export layer: every format and quantization, the metadata contract,
atomic writes, and every error path through the CLI."""

from __future__ import annotations

import json
import signal
import zipfile
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from cifar_deploy import _tf
from cifar_deploy.cli import app
from cifar_deploy.errors import (
    ArtifactExistsError,
    DataNotFoundError,
    ExportError,
    InvalidModelError,
    InvalidOptionError,
)
from cifar_deploy.export import (
    ExportOptions,
    check_options,
    export_formats,
    export_model,
    export_targets,
    read_sidecar,
)
from cifar_deploy.export import base as export_base
from cifar_deploy.export.metadata import sha256_of, sidecar_path
from tests.helpers import CALIBRATION, TOLERANCE, save_tiny_model

runner = CliRunner()
ALL_TARGETS = [(f.name, q) for f in export_formats() for q in f.quantizations]
PROBE = np.random.default_rng(1).integers(0, 256, size=(7, 32, 32, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def exported(tiny_exports):
    """Every format and quantization of the tiny model (the session's shared export)."""
    return tiny_exports


@pytest.fixture(scope="module")
def reference(tiny_model):
    keras = _tf.keras()
    model = keras.models.load_model(tiny_model)
    return model.predict(PROBE.astype(np.float32), verbose=0)


def run_artifact(fmt: str, path: Path, images: np.ndarray) -> np.ndarray:
    """Minimal runtime calls, independent of the package's own predictors."""
    meta = read_sidecar(path)
    if fmt == "savedmodel":
        tf = _tf.tf()
        loaded = tf.saved_model.load(str(path / meta.model_name / "1"))
        return loaded.signatures["serving_default"](images=tf.constant(images, tf.float32))[
            "probabilities"
        ].numpy()
    if fmt in ("tflite", "triton-python"):  # triton-python: the TFLite its model.py runs
        from ai_edge_litert.interpreter import Interpreter

        inner = path / meta.model_name / "1" / "model.tflite" if fmt == "triton-python" else path
        it = Interpreter(model_path=str(inner), num_threads=2)
        inp = it.get_input_details()[0]
        it.resize_tensor_input(inp["index"], list(images.shape))
        it.allocate_tensors()
        assert np.dtype(inp["dtype"]).name == meta.input.dtype  # the sidecar tells the truth
        it.set_tensor(inp["index"], images.astype(inp["dtype"]))
        it.invoke()
        return it.get_tensor(it.get_output_details()[0]["index"])
    import onnxruntime as ort

    onnx_path = path / meta.model_name / "1" / "model.onnx" if fmt == "triton" else path
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    return session.run(["probabilities"], {"images": images.astype(np.float32)})[0]


@pytest.mark.parametrize("fmt, quantization", ALL_TARGETS)
def test_every_artifact_exists_with_a_truthful_sidecar(exported, tiny_model, fmt, quantization):
    artifact = exported[(fmt, quantization)]
    assert artifact.status == "ok", artifact.error
    assert artifact.path.exists() and artifact.size_bytes > 0
    meta = json.loads(sidecar_path(artifact.path).read_text())
    assert (meta["model_name"], meta["format"], meta["quantization"]) == ("cnn", fmt, quantization)
    assert meta["artifact"]["sha256"] == sha256_of(artifact.path)
    assert meta["artifact"]["size_bytes"] == artifact.size_bytes
    assert meta["source"]["sha256"] == sha256_of(tiny_model)
    assert meta["input"]["name"] == "images" and meta["input"]["shape"] == [None, 32, 32, 3]
    assert meta["output"] == {
        "name": "probabilities",
        "shape": [None, 10],
        "dtype": "float32",
        "scale": None,
        "zero_point": None,
    }
    assert len(meta["class_names"]) == 10 and meta["class_names"][3] == "cat"
    assert "0..255" in meta["preprocessing"]
    assert {"tensorflow", "numpy", "cifar_deploy"} <= set(meta["versions"])
    assert meta["export_seconds"] > 0 and meta["created_at"]
    if quantization == "int8":
        calibration = {"samples": 64, "seed": 42, "source": "given"}
        assert {k: meta["calibration"][k] for k in calibration} == calibration


@pytest.mark.parametrize("fmt, quantization", ALL_TARGETS)
def test_every_artifact_runs_in_its_runtime_like_the_keras_model(
    exported, reference, fmt, quantization
):
    probs = run_artifact(fmt, exported[(fmt, quantization)].path, PROBE)
    assert probs.shape == (7, 10) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-2)
    assert np.abs(probs - reference).max() <= TOLERANCE[quantization]


def test_tflite_int8_takes_uint8_pixels_untouched(exported):
    meta = read_sidecar(exported[("tflite", "int8")].path)
    assert meta.input.dtype == "uint8"
    assert meta.input.scale == pytest.approx(1.0, abs=0.01) and meta.input.zero_point == 0
    assert meta.output.dtype == "float32"


def test_tflite_default_quantization_is_int8(tiny_model, tmp_path):
    (artifact,) = export_model(
        tiny_model, "tflite", ExportOptions(calibration_images=CALIBRATION), tmp_path
    )
    assert artifact.quantization == "int8" and artifact.path.name == "cnn_int8.tflite"


def test_tflite_int8_with_int8_input(tiny_model, tmp_path):
    options = ExportOptions(calibration_images=CALIBRATION, io_type="int8")
    (artifact,) = export_model(tiny_model, "tflite", options, tmp_path)
    assert artifact.metadata.input.dtype == "int8" and artifact.metadata.input.zero_point == -128


def test_onnx_has_opset_18_a_dynamic_batch_and_labels(exported):
    import onnx
    import onnxruntime as ort

    path = exported[("onnx", "none")].path
    model = onnx.load(path)
    assert {o.domain: o.version for o in model.opset_import}[""] == 18
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    props = {p.key: p.value for p in model.metadata_props}
    assert json.loads(props["class_names"])[0] == "airplane" and "0..255" in props["preprocessing"]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (1, 5):
        out = session.run(None, {"images": PROBE[:batch].astype(np.float32)})[0]
        assert out.shape == (batch, 10)


def test_onnx_int8_is_qdq_quantized(exported):
    import onnx

    ops = {n.op_type for n in onnx.load(exported[("onnx", "int8")].path).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops


def test_onnx_int8_weights_fit_seven_bits_so_avx2_cpus_cannot_saturate(exported):
    """Without VNNI, ONNX Runtime adds pairs of uint8 x int8 products in a saturating 16-bit lane:
    255 * 64 * 2 = 32640 fits, 255 * 127 * 2 does not. Every int8 weight must lie in [-64, 64]."""
    import onnx
    from onnx import TensorProto, numpy_helper

    model = onnx.load(exported[("onnx", "int8")].path)
    weights = [
        numpy_helper.to_array(t) for t in model.graph.initializer if t.data_type == TensorProto.INT8
    ]
    assert weights, "no int8 weight initializers: the file is not weight-quantized"
    assert min(int(w.min()) for w in weights) >= -64
    assert max(int(w.max()) for w in weights) <= 64
    sidecar = json.loads(Path(f"{exported[('onnx', 'int8')].path}.json").read_text())
    assert sidecar["calibration"]["settings"]["reduce_range"] is True


def test_savedmodel_uses_the_tf_serving_layout(exported):
    path = exported[("savedmodel", "none")].path
    assert (path / "cnn" / "1" / "saved_model.pb").is_file()


def test_triton_config_parses_as_a_model_config(exported):
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    repo = exported[("triton", "none")].path
    config = text_format.Parse(
        (repo / "cnn" / "config.pbtxt").read_text(), model_config_pb2.ModelConfig()
    )
    assert config.name == "cnn" and config.platform == "onnxruntime_onnx"
    assert config.max_batch_size == 64 and config.dynamic_batching.max_queue_delay_microseconds > 0
    assert [i.name for i in config.input] == ["images"] and list(config.input[0].dims) == [
        32,
        32,
        3,
    ]
    assert [o.name for o in config.output] == ["probabilities"] and list(config.output[0].dims) == [
        10
    ]
    assert (repo / "cnn" / "1" / "model.onnx").is_file()


def test_existing_artifacts_need_force(tiny_model, tmp_path):
    options = ExportOptions(quantization="none")
    export_model(tiny_model, "onnx", options, tmp_path)
    with pytest.raises(ArtifactExistsError, match="exists; not overwriting"):
        export_model(tiny_model, "onnx", options, tmp_path)
    (again,) = export_model(
        tiny_model, "onnx", ExportOptions(quantization="none", force=True), tmp_path
    )
    assert again.status == "ok"


def test_existing_artifacts_are_refused_before_any_conversion(tiny_model, tmp_path, monkeypatch):
    export_model(tiny_model, "onnx", ExportOptions(quantization="none"), tmp_path)
    _failing_format(monkeypatch, "tflite", AssertionError("must not convert"))
    targets = [(f, q) for f in export_formats() for q in f.quantizations if f.name != "savedmodel"]
    with pytest.raises(ArtifactExistsError, match="cnn_float32.onnx exists"):
        export_model(tiny_model, targets, ExportOptions(calibration_images=CALIBRATION), tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "cnn_float32.onnx",
        "cnn_float32.onnx.json",
        "labels.txt",  # from the first export
    ]


def _failing_format(monkeypatch, name: str, exc: BaseException):
    """Replace a format's converter with one that writes half a file, then fails."""
    original = {f.name: f for f in export_formats()}[name]

    def broken(source, staging, options, quantization):
        (staging / "half.bin").write_bytes(b"partial")
        raise exc

    import dataclasses

    monkeypatch.setitem(export_base._FORMATS, name, dataclasses.replace(original, fn=broken))


def test_a_converter_failure_is_a_failed_row_and_leaves_nothing_behind(
    tiny_model, tmp_path, monkeypatch
):
    _failing_format(monkeypatch, "onnx", RuntimeError("converter crashed"))
    (row,) = export_model(tiny_model, "onnx", ExportOptions(quantization="none"), tmp_path)
    assert (row.status, row.path) == ("failed", None)
    assert isinstance(row.exception, ExportError)
    assert row.error == "onnx (none) export failed: converter crashed"
    assert list(tmp_path.iterdir()) == []  # no artifact, no sidecar, no staging directory


def test_ctrl_c_mid_export_stops_everything_and_leaves_nothing_behind(
    tiny_model, tmp_path, monkeypatch
):
    _failing_format(monkeypatch, "onnx", KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        export_model(tiny_model, "onnx", ExportOptions(quantization="none"), tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_a_signal_the_converter_turned_into_another_error_still_stops_everything(
    tiny_model, tmp_path, monkeypatch
):
    from cifar_deploy import interrupts

    # what the handler does when SIGTERM lands inside native code that then fails otherwise
    monkeypatch.setattr(interrupts, "_received", [signal.SIGTERM])
    _failing_format(monkeypatch, "onnx", TypeError("expected a message argument"))
    with pytest.raises(KeyboardInterrupt):
        export_model(tiny_model, "onnx", ExportOptions(quantization="none"), tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_a_failure_keeps_the_previous_artifact(tiny_model, tmp_path, monkeypatch):
    (before,) = export_model(tiny_model, "onnx", ExportOptions(quantization="none"), tmp_path)
    digest = sha256_of(before.path)
    _failing_format(monkeypatch, "onnx", RuntimeError("boom"))
    options = ExportOptions(quantization="none", force=True)
    (row,) = export_model(tiny_model, "onnx", options, tmp_path)
    assert row.status == "failed" and row.error == "onnx (none) export failed: boom"
    assert sha256_of(before.path) == digest and sidecar_path(before.path).exists()


def test_int8_without_calibration_data_suggests_dynamic(tiny_model, tmp_path, offline):
    (row,) = export_model(tiny_model, "tflite", ExportOptions(quantization="int8"), tmp_path)
    assert isinstance(row.exception, DataNotFoundError)
    assert "int8 calibration needs" in row.error and "--quantize dynamic" in row.exception.hint


def test_int8_calibrates_on_training_images_from_data_dir(tiny_model, tmp_path, cifar_dir):
    options = ExportOptions(quantization="int8", data_dir=str(cifar_dir), calibration_samples=50)
    (artifact,) = export_model(tiny_model, "onnx", options, tmp_path)
    assert artifact.metadata.calibration["samples"] == 50
    assert artifact.metadata.calibration["source"] == "train split, class-stratified"


def test_models_with_arbitrary_code_are_refused(tmp_path):
    keras = _tf.keras()
    inputs = keras.Input((32, 32, 3))
    outputs = keras.layers.Lambda(lambda x: x[:, 0, 0, :1] * 0 + 0.1)(inputs)
    path = tmp_path / "lambda.keras"
    keras.Model(inputs, keras.layers.Dense(10)(outputs)).save(path)
    with pytest.raises(InvalidModelError, match="cannot be loaded"):
        export_model(path, "onnx", ExportOptions(), tmp_path / "out")


# ---------------------------------------------------------------------------------------------
# The CLI


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def assert_error(result, code, *fragments):
    """Exit ``code``, no traceback, and stderr is warnings (without data: that the
    preprocessing was not checked) then one error line."""
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    said = [line for line in lines if not line.startswith("warning: ")]
    assert said[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr


def test_cli_takes_the_newest_run_and_says_so(tmp_path, monkeypatch):
    runs = tmp_path / "runs"
    save_tiny_model(runs, "cnn")
    monkeypatch.chdir(tmp_path)
    result = invoke("export", "--format", "onnx", "--json")
    assert result.exit_code == 0, result.output
    assert "using runs/cnn/best.keras" in result.stderr
    (record,) = json.loads(result.stdout)
    assert record["path"] == "exports/cnn/cnn_float32.onnx" and record["status"] == "ok"
    assert (tmp_path / "exports" / "cnn" / "cnn_float32.onnx.json").exists()


def test_cli_without_runs_says_to_train_first(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert_error(
        invoke("export", "--format", "tflite"), 2, "no trained model found", "cifar-deploy train"
    )


@pytest.mark.slow  # the fast loop (-m 'not slow') leaves it to CI
def test_cli_all_continues_past_a_failed_format(tiny_model, tmp_path, monkeypatch, cifar_dir):
    _failing_format(monkeypatch, "onnx", RuntimeError("converter crashed"))
    result = invoke(
        "export",
        "--model",
        tiny_model,
        "--format",
        "all",
        "--out",
        tmp_path / "out",
        "--data-dir",
        cifar_dir,
        "--calibration-samples",
        40,
        "--json",
    )
    assert result.exit_code == 1, result.output
    rows = json.loads(result.stdout)
    failed = [(r["format"], r["quantization"]) for r in rows if r["status"] == "failed"]
    assert failed == [("onnx", "none"), ("onnx", "float16"), ("onnx", "int8")]
    assert all("converter crashed" in r["error"] for r in rows if r["status"] == "failed")
    assert len([r for r in rows if r["status"] == "ok"]) == len(ALL_TARGETS) - 3
    assert not list((tmp_path / "out").glob("*.onnx*"))


def test_cli_table_shows_every_row(tiny_model, tmp_path):
    result = invoke(
        "export",
        "--model",
        tiny_model,
        "--format",
        "onnx",
        "--quantize",
        "float16",
        "--out",
        tmp_path,
    )
    assert result.exit_code == 0, result.output
    assert "cnn_float16.onnx" in result.stdout and "ok" in result.stdout


@pytest.mark.parametrize(
    "args, fragments",
    [
        (
            ["--format", "savedmodel", "--quantize", "int8"],
            ["--format savedmodel does not support --quantize int8", "expected one of: none"],
        ),
        (["--format", "all", "--quantize", "int8"], ["--format all exports every quantization"]),
        (["--format", "onnx", "--opset", "9"], ["--opset 9 is not supported"]),
    ],
)
def test_cli_rejects_options_a_format_does_not_support(tiny_model, tmp_path, args, fragments):
    assert_error(invoke("export", "--model", tiny_model, "--out", tmp_path, *args), 2, *fragments)


def test_cli_unknown_format_exits_2(tiny_model):
    result = invoke("export", "--model", tiny_model, "--format", "coreml")
    assert result.exit_code == 2 and "coreml" in result.output and "Traceback" not in result.output


def _broken_model_files(tmp_path: Path, good: Path) -> dict[str, Path]:
    files = {
        "missing": tmp_path / "nope.keras",
        "empty": tmp_path / "empty.keras",
        "truncated": tmp_path / "truncated.keras",
        "not keras": tmp_path / "notes.keras",
        "h5": tmp_path / "model.h5",
    }
    files["empty"].write_bytes(b"")
    data = good.read_bytes()
    files["truncated"].write_bytes(data[: len(data) // 2])
    files["not keras"].write_text("hello")
    files["h5"].write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 100)
    with zipfile.ZipFile(tmp_path / "other.keras", "w") as z:
        z.writestr("config.json", "{not json")
    files["bad zip content"] = tmp_path / "other.keras"
    return files


@pytest.mark.parametrize(
    "kind", ["missing", "empty", "truncated", "not keras", "h5", "bad zip content"]
)
def test_cli_broken_model_files_exit_2_with_one_line(tiny_model, tmp_path, kind):
    path = _broken_model_files(tmp_path, tiny_model)[kind]
    result = invoke("export", "--model", path, "--format", "onnx", "--out", tmp_path / "out")
    assert_error(result, 2, str(path))
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_cli_existing_artifact_without_force_exits_2(tiny_model, tmp_path):
    args = ["export", "--model", tiny_model, "--format", "onnx", "--out", tmp_path]
    assert invoke(*args).exit_code == 0
    assert_error(invoke(*args), 2, "exists; not overwriting", "--force")
    assert invoke(*args, "--force").exit_code == 0


def test_invalid_io_type_combination_is_refused(tiny_model, tmp_path):
    with pytest.raises(InvalidOptionError, match=r"--io-type does not apply to tflite \(dynamic\)"):
        export_model(
            tiny_model, "tflite", ExportOptions(quantization="dynamic", io_type="int8"), tmp_path
        )


def test_options_are_checked_against_every_target_before_any_work():
    every = export_targets("all")
    notes = check_options(every, ExportOptions(io_type="int8", opset=17))
    assert notes == [
        "--io-type int8 applies to tflite (int8) only",
        "--opset 17 applies to onnx (none), onnx (float16), onnx (int8), triton (none) only",
    ]
    assert check_options(export_targets("tflite", "int8"), ExportOptions(io_type="int8")) == []
    with pytest.raises(InvalidOptionError, match="--max-batch-size 0 is not supported"):
        check_options(every, ExportOptions(max_batch_size=0))
    with pytest.raises(InvalidOptionError, match="--calibration-samples 0 is not supported"):
        check_options(every, ExportOptions(calibration_samples=0))
    with pytest.raises(InvalidOptionError, match=r"--opset does not apply to tflite \(int8\)"):
        check_options(export_targets("tflite"), ExportOptions(opset=18))


def test_cli_an_option_no_target_reads_exits_2_before_converting(tiny_model, tmp_path, monkeypatch):
    _failing_format(monkeypatch, "onnx", AssertionError("must not convert"))
    result = invoke(
        "export",
        "--model",
        tiny_model,
        "--format",
        "onnx",
        "--io-type",
        "int8",
        "--out",
        tmp_path / "out",
    )
    assert_error(result, 2, "--io-type does not apply to onnx (none)", "tflite (int8)")
    assert not (tmp_path / "out").exists()


def test_cli_one_failed_target_is_one_line_and_exit_1(tiny_model, tmp_path, monkeypatch):
    _failing_format(monkeypatch, "onnx", RuntimeError("converter crashed"))
    result = invoke("export", "--model", tiny_model, "--format", "onnx", "--out", tmp_path)
    assert_error(result, 1, "onnx (none) export failed: converter crashed")
