"""Specification of the benchmark: sane records, failed and skipped cells, outputs. No timing
thresholds: only relations that hold on any machine."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest
from typer.testing import CliRunner

from cifar_deploy import _tf
from cifar_deploy.checks.bench import BenchConfig, BenchRow, benchmark, input_pool, time_runs
from cifar_deploy.cli import app

runner = CliRunner()
FAST = BenchConfig(batch_sizes=(1, 4), warmup=1, min_time=0.02, min_runs=3)


@pytest.fixture(scope="module")
def exported(tiny_model, tiny_exports):
    return {
        "model": tiny_model,
        "onnx": tiny_exports[("onnx", "none")].path,
        "tflite": tiny_exports[("tflite", "int8")].path,
    }


@pytest.fixture(scope="module")
def rows(exported):
    rows, machine = benchmark([exported["onnx"], exported["tflite"]], FAST)
    return rows, machine


def test_one_row_per_artifact_runtime_and_batch(rows):
    rows, _ = rows
    keys = [(r.artifact, r.runtime, r.batch_size) for r in rows]
    assert keys == [
        ("best.keras", "model.predict", 1),
        ("best.keras", "model.predict", 4),
        ("best.keras", "direct call", 1),
        ("best.keras", "direct call", 4),
        ("cnn_float32.onnx", "predictor", 1),
        ("cnn_float32.onnx", "predictor", 4),
        ("cnn_int8.tflite", "predictor", 1),
        ("cnn_int8.tflite", "predictor", 4),
    ]
    assert all(r.status == "ok" for r in rows), [r.reason for r in rows]


def test_records_are_internally_consistent(rows):
    rows, _ = rows
    for r in rows:
        assert 0 < r.p50_ms <= r.p90_ms <= r.p99_ms
        assert r.std_ms >= 0 and r.mean_ms > 0 and r.runs >= FAST.min_runs
        assert r.throughput == pytest.approx(r.batch_size * 1000 / r.p50_ms)
        assert r.load_ms > 0 and r.first_inference_ms > 0 and r.peak_rss_added_mb >= 0
        assert r.speedup_vs_predict > 0
    predict = [r for r in rows if r.runtime == "model.predict"]
    assert all(r.speedup_vs_predict == pytest.approx(1.0) for r in predict)
    tflite = [r for r in rows if r.artifact.endswith(".tflite")]
    assert all(r.quantization == "int8" and r.size_bytes > 0 and r.threads is None for r in tflite)


def test_machine_info_is_recorded(rows):
    _, machine = rows
    assert machine["cores"] >= 1 and machine["cpu"]
    assert machine["cpu_int8"] and machine["cpu_bf16"]  # where the int8 figures hold
    assert {"tensorflow", "numpy"} <= set(machine["versions"])
    assert machine["config"]["batch_sizes"] == [1, 4]


def test_a_broken_artifact_fails_its_rows_and_the_sweep_goes_on(exported, tmp_path):
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not onnx")
    rows, _ = benchmark([broken, exported["tflite"]], FAST)
    by_artifact = {}
    for r in rows:
        by_artifact.setdefault(r.artifact, []).append(r)
    assert [r.status for r in by_artifact["broken.onnx"]] == ["failed", "failed"]
    assert "not a loadable ONNX model" in by_artifact["broken.onnx"][0].reason
    assert [r.status for r in by_artifact["cnn_int8.tflite"]] == ["ok", "ok"]


def _has_gpu() -> bool:
    return bool(_tf.tf().config.list_physical_devices("GPU"))


@pytest.mark.skipif(_has_gpu(), reason="checks the no-GPU rows")
def test_gpu_rows_are_skipped_without_a_gpu(exported):
    config = BenchConfig(
        batch_sizes=(1,), warmup=0, min_time=0.0, min_runs=1, devices=("cpu", "gpu")
    )
    rows, _ = benchmark([exported["onnx"]], config)
    gpu = [r for r in rows if r.device == "gpu"]
    assert gpu and all(r.status == "skipped" and r.reason == "no GPU" for r in gpu)
    assert all(r.status == "ok" for r in rows if r.device == "cpu")


def test_each_timed_run_gets_fresh_input():
    seen = []
    pool = input_pool(2)
    time_runs(lambda x: seen.append(x.tobytes()), pool, warmup=0, min_time=0.0, min_runs=8)
    assert len(set(seen)) == len(pool) > 1
    assert all(np.asarray(p).max() > 0 for p in pool)  # not zeros


def test_the_cli_writes_json_csv_and_a_plot(exported, tmp_path):
    # A verify JSON for the accuracy panel.
    verify_json = tmp_path / "parity.json"
    verify_json.write_text(
        json.dumps(
            [
                {
                    "name": "cnn_float32.onnx",
                    "path": str(exported["onnx"]),
                    "status": "pass",
                    "accuracy": 0.5,
                },
                {
                    "name": "cnn_int8.tflite",
                    "path": str(exported["tflite"]),
                    "status": "pass",
                    "accuracy": 0.49,
                },
            ]
        )
    )
    out = {k: tmp_path / f"bench.{k}" for k in ("json", "csv", "png")}
    result = runner.invoke(
        app,
        [
            "bench",
            str(exported["onnx"]),
            str(exported["tflite"]),
            "--batch-sizes",
            "1,2",
            "--warmup",
            "1",
            "--min-time",
            "0.02",
            "--min-runs",
            "3",
            "--threads",
            "1",
            "--json-out",
            str(out["json"]),
            "--csv",
            str(out["csv"]),
            "--plot",
            str(out["png"]),
            "--accuracy",
            str(verify_json),
        ],
    )
    assert result.exit_code == 0, result.output
    data = json.loads(out["json"].read_text())
    assert set(data) == {"machine", "rows"} and len(data["rows"]) == 8
    assert set(data["rows"][0]) == set(BenchRow.__dataclass_fields__)
    table = list(csv.DictReader(io.StringIO(out["csv"].read_text())))
    assert len(table) == 8 and float(table[-1]["p50_ms"]) > 0
    assert {r["threads"] for r in table if r["runtime"] == "predictor"} == {"1"}
    png = out["png"].read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    assert "cnn_int8.tflite" in result.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["--batch-sizes", "0,8"], "batch sizes must be >= 1"),
        (["--batch-sizes", "a,b"], "--batch-sizes must be comma-separated integers"),
        (["--threads", "0"], "thread counts must be >= 1"),
    ],
)
def test_bad_sweep_options_exit_2(exported, args, message):
    result = runner.invoke(app, ["bench", str(exported["onnx"]), *args])
    assert result.exit_code == 2 and message in result.stderr


def test_cli_json_prints_the_record_on_stdout_and_nothing_else(exported):
    args = ["bench", str(exported["onnx"]), "--batch-sizes", "1", "--warmup", "0"]
    args += ["--min-time", "0", "--min-runs", "1", "--no-baseline", "--json"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert [(r["artifact"], r["batch_size"], r["status"]) for r in data["rows"]] == [
        ("cnn_float32.onnx", 1, "ok")
    ]
