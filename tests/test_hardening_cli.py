"""Specification: bad options and interruptions (issue #14, part 5). Every out-of-range or
non-finite option value, and every output path that cannot be written, is refused before any
work with one line and exit 2; SIGTERM stops an export as Ctrl-C does and leaves nothing behind;
scratch folders of killed runs are removed by the next run; ``bench`` fails when every cell
failed; ``serve`` warns when it listens beyond this machine."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cifar_deploy.cli import app
from tests.helpers import REPO

runner = CliRunner()


def cli(*args: str, cwd: Path = REPO, timeout: float = 120) -> subprocess.CompletedProcess:
    """The console script's own entry point, in a subprocess (as users run it)."""
    return subprocess.run(
        [sys.executable, "-c", "from cifar_deploy.cli import main; main()", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=timeout,
    )


# (arguments, a fragment of the one-line error)
BAD_OPTIONS = {
    "serve port": (["serve", "x", "--port", "70000"], "--port"),
    "serve batch 0": (["serve", "x", "--max-batch-size", "0"], "--max-batch-size"),
    "serve delay -1": (["serve", "x", "--max-queue-delay-ms", "-1"], "--max-queue-delay-ms"),
    "serve payload 0": (["serve", "x", "--max-payload-mb", "0"], "--max-payload-mb"),
    "serve delay nan": (["serve", "x", "--max-queue-delay-ms", "nan"], "--max-queue-delay-ms"),
    "train seed -1": (["train", "cnn", "--seed", "-1"], "--seed"),
    "train epochs 0": (["train", "cnn", "--epochs", "0"], "--epochs"),
    "train lr nan": (["train", "cnn", "--lr", "nan"], "must be a finite number"),
    "train weight decay nan": (["train", "cnn", "--weight-decay", "nan"], "--weight-decay"),
    "train weight decay inf": (["train", "cnn", "--weight-decay", "inf"], "--weight-decay"),
    "bench min time nan": (["bench", "--min-time", "nan"], "--min-time"),
    "bench threads 0": (["bench", "--threads", "0"], "thread counts must be >= 1"),
    "verify agreement 2": (["verify", "--min-agreement", "2"], "--min-agreement"),
    "verify samples 0": (["verify", "--samples", "0"], "--samples"),
    "verify json in a missing dir": (["verify", "--json-out", "/no/such/dir/x.json"], "/no/such"),
    "bench csv in a missing dir": (["bench", "--csv", "/no/such/dir/x.csv"], "does not exist"),
    "export out is a file": (["export", "--format", "tflite", "--out", "README.md"], "is a file"),
    "export calibration 0": (
        ["export", "--format", "tflite", "--calibration-samples", "0"],
        "Invalid value for '--calibration-samples'",
    ),
}


@pytest.mark.parametrize("case", list(BAD_OPTIONS))
def test_bad_option_values_exit_2_before_any_work(case):
    args, fragment = BAD_OPTIONS[case]
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert fragment in result.output, result.output
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit)


@pytest.mark.slow
def test_the_console_script_prints_usage_errors_as_one_line():
    result = cli("serve", "x", "--port", "70000")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert (
        lines[0] == "error: Invalid value for '--port': Input should be less than or equal to 65535"
    )
    assert lines[1:] == ["hint: cifar-deploy serve --help lists the options"]


@pytest.mark.parametrize("command", [c.name for c in app.registered_commands])
def test_every_command_help_renders(command):
    result = runner.invoke(app, [command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


def test_too_few_training_images_for_a_validation_split_is_one_line(cifar_dir, tmp_path):
    result = runner.invoke(
        app,
        ["train", "cnn", "--data-dir", str(cifar_dir), "--max-train-samples", "2"]
        + ["--epochs", "1", "--runs-dir", str(tmp_path / "runs")],
    )
    assert result.exit_code == 2, result.output
    assert "leave 0 for validation and 2 for training" in result.output


def test_bench_exits_1_when_every_cell_failed(monkeypatch, tiny_onnx):
    from cifar_deploy.checks import bench

    real = bench.benchmark

    def all_failed(paths, config, **kwargs):
        rows, machine = real(paths, config, **kwargs)
        for row in rows:
            row.status, row.reason = "failed", "RuntimeError: injected"
        return rows, machine

    monkeypatch.setattr(bench, "benchmark", all_failed)
    args = ["bench", str(tiny_onnx), "--batch-sizes", "1", "--min-time", "0", "--min-runs", "1"]
    result = runner.invoke(app, [*args, "--no-baseline", "--warmup", "0"])
    assert result.exit_code == 1, result.output
    assert "benchmark cells failed" in result.output


def test_serve_warns_when_it_listens_beyond_this_machine(monkeypatch, tiny_onnx):
    import uvicorn

    monkeypatch.setattr(uvicorn.Server, "run", lambda self: None)  # configure, do not serve
    result = runner.invoke(app, ["serve", str(tiny_onnx), "--host", "0.0.0.0"])
    assert result.exit_code == 0, result.output
    assert "--host 0.0.0.0 listens beyond this machine" in result.output
    quiet = runner.invoke(app, ["serve", str(tiny_onnx)])
    assert "listens beyond" not in quiet.output


def _dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def test_scratch_folders_of_a_killed_export_are_removed_by_the_next_run(tiny_model, tmp_path):
    from cifar_deploy.export import ExportOptions, export_model

    out = tmp_path / "out"
    out.mkdir()
    dead = _dead_pid()
    stale_staging = out / f".cnn_float32.tflite.pid{dead}.abc123"
    stale_scratch = Path(tempfile.gettempdir()) / f"cifar_deploy_sm.pid{dead}.xyz"
    for folder in (stale_staging, stale_scratch):
        (folder / "inner").mkdir(parents=True)
    live = out / f".cnn_float32.tflite.pid{os.getpid()}.busy"  # a running export's: kept
    live.mkdir()
    (artifact,) = export_model(tiny_model, "tflite", ExportOptions(quantization="none"), out)
    assert artifact.status == "ok"
    assert not stale_staging.exists() and not stale_scratch.exists()
    assert live.exists()


SIGNAL_IN_A_DESTRUCTOR = """
import os, signal, sys
from cifar_deploy import interrupts
interrupts.install()
class Holder:
    def __del__(self):
        os.kill(os.getpid(), signal.SIGTERM)  # the handler raises here, where nothing can catch it
        sum(range(1000))
holder = Holder()
del holder
try:
    interrupts.check()
except KeyboardInterrupt:
    print("interrupted")
"""


def test_a_signal_landing_in_a_destructor_prints_no_traceback_and_is_raised_after():
    result = subprocess.run(
        [sys.executable, "-c", SIGNAL_IN_A_DESTRUCTOR],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (result.returncode, result.stdout.strip(), result.stderr) == (0, "interrupted", "")


@pytest.mark.slow
def test_sigterm_during_export_exits_130_and_leaves_nothing_behind(tiny_model, tmp_path):
    out = tmp_path / "out"
    command = "from cifar_deploy.cli import main; main()"
    args = ["export", "--model", str(tiny_model), "--format", "onnx", "--out", str(out)]
    process = subprocess.Popen(
        [sys.executable, "-c", command, *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if out.exists() and any(p.name.startswith(".") for p in out.iterdir()):
            break  # the staging folder exists: the export is under way
        time.sleep(0.02)
    assert process.poll() is None, process.communicate()
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert "error: interrupted" in stderr and "Traceback" not in stderr
    assert list(out.iterdir()) == []  # no artifact, no sidecar, no staging folder
    scratch = Path(tempfile.gettempdir()).glob(f"cifar_deploy_sm.pid{process.pid}.*")
    assert list(scratch) == []
