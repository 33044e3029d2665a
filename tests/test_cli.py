"""Specification of the command line, driven through typer's CliRunner (error paths included)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from cifar_deploy.cli import app

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def assert_one_line_error(result, code, *fragments):
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    first = result.stderr.strip().splitlines()[0]
    assert first.startswith("error: ")
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr


def test_help_lists_the_commands():
    result = invoke("--help")
    assert result.exit_code == 0
    assert "train" in result.stdout and "models" in result.stdout


@pytest.mark.parametrize("columns", [80, 200])
def test_help_paragraphs_wrap_to_the_terminal_width_up_to_120_columns(columns):
    # a real process: click's test runner pins help to 80 columns
    result = subprocess.run(
        [sys.executable, "-m", "cifar_deploy", "serve", "--help"],
        env={**os.environ, "COLUMNS": str(columns)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    prose = [line.strip() for line in result.stdout.splitlines()]
    words = " ".join(prose).split()
    assert "a directory: exports/cnn/ serves every artifact" in " ".join(words)
    lines = [line for line in prose if line]
    # no ragged half-lines: every line of a paragraph but its last fills most of the width
    paragraph = next(i for i, line in enumerate(lines) if line.startswith("ARTIFACT is"))
    end = next(i for i, line in enumerate(lines) if '"Limits")' in line)
    assert end > paragraph
    width = min(columns, 120)  # help text stops widening at 120 columns
    assert all(len(line) > (width - 2) * 0.6 for line in lines[paragraph:end])


def test_train_help_explains_the_options():
    result = invoke("train", "--help")
    assert result.exit_code == 0
    for option in (
        "--quick",
        "--epochs",
        "--data-dir",
        "--strategy",
        "--mixed-precision",
        "--max-train-samples",
        "--val-split",
        "--seed",
        "--weights",
        "--runs-dir",
    ):
        assert option in result.stdout


@pytest.mark.slow
def test_models_json_lists_the_registry_with_parameter_counts():
    result = invoke("models", "--json")
    assert result.exit_code == 0, result.output
    rows = {r["name"]: r for r in json.loads(result.stdout)}
    assert set(rows) == {"airbench", "cnn", "mobilenetv2", "wrn-28-10"}
    assert 1.5e6 <= rows["cnn"]["parameters"] <= 2.5e6
    assert 36.3e6 <= rows["wrn-28-10"]["parameters"] <= 36.7e6
    assert rows["cnn"]["quick_preset"] is True
    assert "MixUp 0.2" in rows["wrn-28-10"]["recipe"]


def test_unknown_model_exits_2_with_the_closest_name(cifar_dir):
    result = invoke("train", "cnm", "--data-dir", cifar_dir)
    assert_one_line_error(result, 2, "unknown model 'cnm'", "did you mean 'cnn'?")


def test_quick_for_a_model_without_a_preset_exits_2():
    result = invoke("train", "wrn-28-10", "--quick")
    assert_one_line_error(result, 2, "--quick is a preset for airbench, cnn")


def test_bad_wide_resnet_depth_exits_2():
    result = invoke("train", "wrn-27-10")
    assert_one_line_error(result, 2, "6n + 4", "received 27")


def test_weights_for_a_model_trained_from_scratch_exits_2():
    result = invoke("train", "cnn", "--weights", "imagenet")
    assert_one_line_error(result, 2, "--weights applies to pretrained models only")


def test_invalid_values_exit_2(cifar_dir):
    result = invoke("train", "cnn", "--val-split", "1.5", "--data-dir", cifar_dir)
    assert_one_line_error(result, 2, "validation split", "1.5")
    result = invoke("train", "cnn", "--strategy", "parameter-server")
    assert result.exit_code == 2 and "Traceback" not in result.output


def test_offline_without_data_exits_2_naming_the_three_ways(offline):
    result = invoke("train", "cnn", "--epochs", "1")
    assert_one_line_error(result, 2, "--data-dir", "CIFAR10_DIR", "Keras cache")


def test_data_dir_without_data_exits_2(tmp_path):
    result = invoke("train", "cnn", "--data-dir", tmp_path)
    assert_one_line_error(result, 2, "holds no CIFAR-10 data")


def test_train_json_prints_the_run_record(tmp_path, cifar_dir):
    result = invoke(
        "train",
        "cnn",
        "--data-dir",
        cifar_dir,
        "--runs-dir",
        tmp_path / "runs",
        "--epochs",
        1,
        "--warmup-epochs",
        0,
        "--batch-size",
        16,
        "--max-train-samples",
        40,
        "--json",
    )
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["status"] == "completed" and info["data"]["train_images"] == 36
    assert (tmp_path / "runs" / "cnn" / "best.keras").exists()
    assert 0.0 <= info["test_accuracy"] <= 1.0


@pytest.mark.parametrize(
    "command", ["", "models", "train", "export", "verify", "bench", "inspect", "serve", "predict",
                "pipeline"],
)  # fmt: skip
def test_every_help_fits_80_columns_and_shows_flags_without_a_type(command):
    result = runner.invoke(app, [c for c in (command, "--help") if c], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    assert "<bool>" not in result.stdout
    assert max(len(line) for line in result.stdout.splitlines()) <= 80


def test_choices_come_from_the_format_table_and_the_registries():
    """``export --help`` offers exactly the formats and quantizations the export table has."""
    from cifar_deploy.export import export_formats

    text = " ".join(invoke("export", "--help").stdout.split())
    formats = [f.name for f in export_formats()]
    assert f"<{'|'.join(formats)}|all>" in text
    quantizations = dict.fromkeys(q for f in export_formats() for q in f.quantizations)
    assert f"<{'|'.join(quantizations)}>" in text
    assert "<none|mirrored|multi-worker>" in " ".join(invoke("train", "--help").stdout.split())
