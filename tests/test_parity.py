"""Specification of accuracy-parity verification (cifar_deploy.checks.verify, `verify`)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from cifar_deploy import _tf
from cifar_deploy.checks.verify import (
    TOLERANCES,
    Tolerance,
    compare,
    expected_calibration_error,
    judge,
    tolerance_for,
    verify,
)
from cifar_deploy.cli import app
from cifar_deploy.errors import InvalidModelError, InvalidOptionError
from cifar_deploy.export import ExportOptions, export_model
from cifar_deploy.training import create_model
from tests.helpers import TINY_CNN, copy_artifacts, save_tiny_model

runner = CliRunner()


def test_tolerance_table_matches_the_contract():
    assert TOLERANCES["none"] == Tolerance(max_abs_diff=1e-4, min_agreement=0.999)
    assert TOLERANCES["float16"].max_abs_diff == 5e-3
    assert TOLERANCES["int8"].max_accuracy_drop == TOLERANCES["dynamic"].max_accuracy_drop == 1.0
    assert tolerance_for("int8", {"max_accuracy_drop": 0.5, "max_abs_diff": None}) == Tolerance(
        max_accuracy_drop=0.5
    )
    with pytest.raises(InvalidOptionError, match="no tolerance for quantization 'int4'"):
        tolerance_for("int4")


def test_ece_of_overconfident_predictions():
    # Confidence 1.0 everywhere, half of them right: ECE = |0.5 - 1.0| = 0.5.
    probs = np.eye(10, dtype=np.float32)[[0, 1, 2, 3]]
    assert expected_calibration_error(probs, np.array([0, 1, 5, 5])) == pytest.approx(0.5)
    # Confidence 0.55 and accuracy 0.5 in one bin: 0.05.
    probs = np.full((2, 10), 0.05, np.float32)
    probs[:, 0] = 0.55
    assert expected_calibration_error(probs, np.array([0, 1])) == pytest.approx(0.05)


def test_compare_figures():
    labels = np.array([0, 1, 2, 3])
    ref = np.eye(10, dtype=np.float32)[[0, 1, 2, 3]]
    probs = ref.copy()
    probs[3] = np.eye(10, dtype=np.float32)[4]  # one prediction changes, from right to wrong
    f = compare(probs, ref, labels)
    assert f["accuracy"] == 0.75 and f["accuracy_diff"] == pytest.approx(-25.0)
    assert f["agreement"] == 0.75 and f["max_abs_diff"] == 1.0
    assert f["mean_abs_diff"] == pytest.approx(2 / 40)
    assert f["worst_class_diff"] == pytest.approx(-100.0)  # class 3 went from 1/1 to 0/1
    assert compare(ref, ref, labels)["max_abs_diff"] == 0.0


def test_judge_names_every_broken_tolerance():
    figures = {"max_abs_diff": 0.2, "agreement": 0.9, "accuracy_diff": -3.0}
    assert judge(figures, TOLERANCES["none"]) == [
        "max abs diff 2.00e-01 > 0.0001",
        "agreement 90.00% < 99.90%",
    ]
    assert judge(figures, TOLERANCES["int8"]) == ["accuracy drop 3.00 points > 1"]
    assert (
        judge({"max_abs_diff": 0.0, "agreement": 1.0, "accuracy_diff": 0.0}, TOLERANCES["none"])
        == []
    )


@pytest.fixture(scope="module")
def workspace(tiny_model, tiny_exports, tmp_path_factory):
    """The tiny model, a directory of its float32 exports, and a damaged twin exported with the
    same name."""
    keras = _tf.keras()
    root = tmp_path_factory.mktemp("parity")
    floats = [tiny_exports[(f, "none")] for f in ("onnx", "tflite", "savedmodel")]
    exports = copy_artifacts(floats, root / "exports" / "cnn")
    # The damaged twin: the same architecture with every kernel perturbed.
    damaged = create_model("cnn", **TINY_CNN)
    damaged.set_weights(keras.models.load_model(tiny_model).get_weights())
    rng = np.random.default_rng(0)
    damaged.set_weights(
        [
            w + rng.normal(0, 0.5, w.shape).astype(w.dtype) if w.ndim > 1 else w
            for w in damaged.get_weights()
        ]
    )
    bad_source = save_tiny_model(root / "damaged_runs", model=damaged)
    options = ExportOptions(quantization="none")
    (bad,) = export_model(bad_source, "onnx", options, root / "damaged")
    return {"good": tiny_model, "exports": exports, "damaged": bad.path, "root": root}


def test_float32_exports_pass_against_their_source(workspace, cifar_dir):
    rows = verify([workspace["exports"]], data_dir=cifar_dir)
    assert rows[0].status == "reference" and rows[0].samples == 60
    assert [r.status for r in rows[1:]] == ["pass"] * 3, [r.reasons for r in rows]
    for row in rows[1:]:
        assert row.agreement == 1.0 and row.max_abs_diff <= 1e-4 and row.accuracy_diff == 0.0


def test_a_damaged_artifact_fails_verification(workspace, cifar_dir):
    rows = verify([workspace["damaged"]], reference=workspace["good"], data_dir=cifar_dir)
    (row,) = rows[1:]
    assert row.status == "fail"
    assert any(r.startswith("max abs diff") for r in row.reasons)


def test_loosened_tolerances_let_the_damaged_artifact_pass(workspace, cifar_dir):
    rows = verify(
        [workspace["damaged"]],
        reference=workspace["good"],
        data_dir=cifar_dir,
        overrides={"max_abs_diff": 1.0, "min_agreement": 0.0},
    )
    assert rows[1].status == "pass"


def test_artifacts_of_different_models_are_refused(workspace, cifar_dir, tmp_path):
    other = save_tiny_model(tmp_path / "runs", name="other")
    (art,) = export_model(other, "onnx", ExportOptions(quantization="none"), tmp_path / "x")
    with pytest.raises(InvalidOptionError, match="different models in one call: cnn, other"):
        verify([workspace["exports"], art.path], data_dir=cifar_dir)


def test_a_reference_that_is_not_keras_is_refused(workspace, cifar_dir):
    onnx_path = workspace["exports"] / "cnn_float32.onnx"
    with pytest.raises(InvalidModelError, match="reference must be a Keras model file"):
        verify([onnx_path], reference=onnx_path, data_dir=cifar_dir)


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_cli_verify_passes_writes_json_and_markdown(workspace, cifar_dir, tmp_path):
    md = tmp_path / "parity.md"
    result = invoke(
        "verify", workspace["exports"], "--data-dir", cifar_dir, "--json", "--markdown", md
    )
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [r["status"] for r in rows] == ["reference", "pass", "pass", "pass"]
    assert {
        "accuracy",
        "accuracy_diff",
        "agreement",
        "max_abs_diff",
        "mean_abs_diff",
        "worst_class_diff",
        "ece",
    } <= set(rows[1])
    assert md.read_text().count("| pass") == 3


def test_cli_verify_json_out_writes_the_rows_beside_the_table(workspace, cifar_dir, tmp_path):
    out = tmp_path / "rows.json"
    result = invoke("verify", workspace["exports"], "--data-dir", cifar_dir, "--json-out", out)
    assert result.exit_code == 0, result.output
    assert [r["status"] for r in json.loads(out.read_text())] == ["reference"] + ["pass"] * 3
    assert "Parity on 60 test images" in result.stdout
    assert "int8:" in result.stdout and "bf16:" in result.stdout  # int8 results depend on the CPU


def test_verify_table_fits_80_columns_one_line_per_artifact_and_wide_shows_every_column(
    workspace, cifar_dir
):
    result = invoke("verify", workspace["exports"], "--data-dir", cifar_dir)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert max(len(line.rstrip()) for line in lines) <= 80, [x for x in lines if len(x) > 80]
    names = [p.name for p in workspace["exports"].iterdir() if not p.name.endswith(".json")]
    for name in names:
        assert sum(name in line for line in lines) == 1, (name, result.stdout)
    wide = invoke("verify", workspace["exports"], "--data-dir", cifar_dir, "--wide")
    assert wide.exit_code == 0 and "flip TTA" in wide.stdout and "worst class" in wide.stdout


def test_the_pre_0_2_json_file_spelling_is_gone(workspace, cifar_dir, tmp_path):
    """``--json`` is a flag; a file after it is one more artifact, refused as missing."""
    out = tmp_path / "old.json"
    result = invoke("verify", workspace["exports"], "--data-dir", cifar_dir, "--json", out)
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: ") and "old.json" in result.stderr
    assert not out.exists()


def test_cli_verify_exit_1_on_a_damaged_artifact(workspace, cifar_dir):
    result = invoke(
        "verify", workspace["damaged"], "--reference", workspace["good"], "--data-dir", cifar_dir
    )
    assert result.exit_code == 1, result.output
    assert "fail" in result.stdout


def test_cli_verify_exit_2_on_a_corrupt_artifact(workspace, cifar_dir, tmp_path):
    bad = tmp_path / "cnn_float32.onnx"
    bad.write_bytes((workspace["exports"] / "cnn_float32.onnx").read_bytes()[:500])
    result = invoke("verify", bad, "--reference", workspace["good"], "--data-dir", cifar_dir)
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: ") and "not a loadable ONNX model" in result.stderr


def test_cli_verify_without_exports_says_to_export(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = invoke("verify")
    assert result.exit_code == 2 and "no exported artifacts" in result.stderr


@pytest.mark.real_data
def test_float_exports_keep_parity_on_real_test_images(workspace, real_data_dir):
    rows = verify([workspace["exports"]], data_dir=real_data_dir, samples=500)
    assert rows[0].samples == 500
    assert all(r.status == "pass" for r in rows[1:]), [r.reasons for r in rows]
