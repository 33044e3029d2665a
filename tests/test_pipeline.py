"""Specification of `cifar-deploy pipeline`: every stage, the report, resume, --force, failure."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cifar_deploy import pipeline
from cifar_deploy.cli import app
from cifar_deploy.errors import ExportError
from cifar_deploy.pipeline import PipelineConfig, run_pipeline
from tests.helpers import TINY_CNN

runner = CliRunner()
STAGES = ["train", "export", "verify", "bench", "report"]


def tiny_config(tmp_path, data_dir, **kw) -> PipelineConfig:
    return PipelineConfig(
        model="cnn",
        epochs=1,
        data_dir=data_dir,
        runs_dir=tmp_path / "runs",
        exports_dir=tmp_path / "exports",
        formats=kw.pop("formats", ("tflite", "onnx")),
        bench_batch_sizes=(1, 2),
        bench_min_time=0.01,
        model_kwargs=TINY_CNN,
        **kw,
    )


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One complete tiny pipeline run, shared by the tests that only read its results."""
    from tests.helpers import write_cifar_dir

    root = tmp_path_factory.mktemp("pipeline")
    data = write_cifar_dir(root / "data").parent
    cfg = tiny_config(root, data)
    return cfg, run_pipeline(cfg)


def test_every_stage_runs_and_the_report_is_written(finished):
    cfg, results = finished
    assert [(r.name, r.status) for r in results] == [(s, "done") for s in STAGES], results
    run = cfg.run_dir
    for name in (
        "best.keras",
        "history.csv",
        "run.json",
        "parity.json",
        "bench.json",
        "report.md",
        "report.json",
        "report.html",
    ):
        assert (run / name).stat().st_size > 0, name
    for plot in (
        "training.png",
        "latency.png",
        "accuracy.png",
        "confusion.png",
        "reliability.png",
        "per_class.png",
    ):
        assert (run / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(list(cfg.export_dir.glob("*.json"))) == 7  # tflite x4 + onnx x3


def test_report_names_the_smallest_and_fastest_passing_artifacts(finished):
    cfg, _ = finished
    report = json.loads((cfg.run_dir / "report.json").read_text())
    rows = {r["artifact"]: r for r in report["artifacts"]}
    assert len(rows) == 7
    passing = [r for r in rows.values() if r["status"] == "pass"]
    smallest = min(passing, key=lambda r: r["size_bytes"])
    fastest = min(passing, key=lambda r: r["p50_ms_batch1"])
    assert report["recommendation"] == {
        "smallest_passing": smallest["artifact"],
        "fastest_passing": fastest["artifact"],
    }
    assert all(r["size_bytes"] > 0 and r["best_throughput"] > 0 for r in rows.values())
    md = (cfg.run_dir / "report.md").read_text()
    assert "Recommendation" in md and smallest["artifact"] in md and "![training curves]" in md
    assert report["machine"]["cores"] >= 1


def test_report_says_which_architecture_and_recipe_trained_and_on_which_cpu(finished):
    cfg, _ = finished
    md = (cfg.run_dir / "report.md").read_text()
    assert "Model `cnn`: 3-block CNN baseline" in md
    assert "Recipe: train: 1 ep SGD+Nesterov" in md
    header = md.splitlines()[2]
    assert header.startswith("Measured on ") and "int8: " in header and "bf16: " in header
    assert "int8: " in (cfg.run_dir / "report.html").read_text()


def test_the_html_report_is_one_self_contained_file_with_every_picture(finished):
    cfg, _ = finished
    page = (cfg.run_dir / "report.html").read_text()
    assert page.count('src="data:image/png;base64,') == 6
    assert not re.search(r'src="(?!data:)', page)  # nothing fetched from beside it
    for caption in ("Confusion matrix", "Reliability diagram", "Per-class accuracy difference"):
        assert caption in page
    md = (cfg.run_dir / "report.md").read_text()
    assert "(confusion.png)" in md and "(reliability.png)" in md


def test_the_accuracy_plot_puts_every_label_apart_even_when_points_crowd(finished):
    from cifar_deploy.plots import accuracy_figure

    cfg, _ = finished
    parity = [r for r in json.loads((cfg.run_dir / "parity.json").read_text())]
    crowd = [
        dict(r, name=f"{r['name']} #{k}", accuracy_diff=(r["accuracy_diff"] or 0.0) + 0.01 * k)
        for k in range(3)
        for r in parity
        if r["status"] != "reference"
    ]
    fig, labels = accuracy_figure(crowd)
    from matplotlib.text import Text

    boxes = [Text.get_window_extent(label) for label in labels]  # the text, not its line
    assert len(boxes) == len(crowd) >= 12
    for i, a in enumerate(boxes):
        for b in boxes[i + 1 :]:
            assert not a.overlaps(b), (a, b)
    ymin, ymax = fig.axes[0].get_ylim()
    assert ymin <= -1.5 and ymax >= 0.5  # the tolerance band is always in view


def copy_of(finished, tmp_path) -> PipelineConfig:
    """A private copy of the finished run (files and times), so no test changes another's."""
    cfg, _ = finished
    for name in ("runs", "exports"):
        shutil.copytree(Path(getattr(cfg, f"{name}_dir")), tmp_path / name)
    return dataclasses.replace(cfg, runs_dir=tmp_path / "runs", exports_dir=tmp_path / "exports")


def set_times(root: Path, when: float) -> None:
    for path in root.rglob("*"):
        os.utime(path, (when, when))


def test_a_second_run_skips_every_stage(finished, tmp_path):
    cfg = copy_of(finished, tmp_path)
    results = run_pipeline(cfg)
    assert [r.status for r in results] == ["skipped"] * 5
    assert all("up to date" in r.detail for r in results)


def test_a_newer_input_reruns_the_stages_after_it(finished, tmp_path):
    cfg = copy_of(finished, tmp_path)
    set_times(tmp_path, 1_700_000_000)  # every file equally old: every stage up to date
    parity = cfg.run_dir / "parity.json"
    os.utime(parity, (1_700_000_001, 1_700_000_001))  # verify's output is now newer than the report
    results = run_pipeline(cfg)
    assert [r.status for r in results] == ["skipped"] * 4 + ["done"]


@pytest.mark.slow  # the fast loop (-m 'not slow') leaves it to CI
def test_force_redoes_everything(tmp_path, cifar_dir):
    cfg = tiny_config(tmp_path, cifar_dir, force=True)
    cfg.formats = ("onnx",)
    first = run_pipeline(cfg)
    again = run_pipeline(cfg)
    assert [r.status for r in first] == [r.status for r in again] == ["done"] * 5


def test_a_failed_stage_stops_the_later_ones_and_keeps_earlier_results(
    tmp_path, cifar_dir, monkeypatch
):
    def broken_export(cfg):
        raise ExportError("onnx (none) export failed: converter crashed")

    monkeypatch.setattr(pipeline.STAGES[1], "run", broken_export)
    cfg = tiny_config(tmp_path, cifar_dir)
    results = run_pipeline(cfg)
    assert [r.status for r in results] == ["done", "failed", "not run", "not run", "not run"]
    assert "converter crashed" in results[1].detail
    assert results[2].detail == "needs export, which failed"
    assert (cfg.run_dir / "best.keras").exists()  # training's result stays


def test_unknown_model_or_format_fails_before_any_work(tmp_path, cifar_dir):
    result = runner.invoke(app, ["pipeline", "cnnx", "--runs-dir", str(tmp_path)])
    assert result.exit_code == 2 and "unknown model 'cnnx'" in result.stderr
    result = runner.invoke(
        app, ["pipeline", "cnn", "--formats", "coreml", "--runs-dir", str(tmp_path)]
    )
    assert result.exit_code == 2 and "unknown format 'coreml'" in result.stderr
    assert not (tmp_path / "cnn").exists()


@pytest.mark.slow
def test_cli_pipeline_end_to_end_on_synthetic_data(tmp_path, cifar_dir):
    args = [
        "pipeline",
        "cnn",
        "--epochs",
        "1",
        "--data-dir",
        str(cifar_dir),
        "--runs-dir",
        str(tmp_path / "runs"),
        "--exports-dir",
        str(tmp_path / "exports"),
        "--bench-batch-sizes",
        "1",
        "--bench-min-time",
        "0.01",
        "--json",
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    stages = json.loads(result.stdout)
    assert [s["status"] for s in stages] == ["done"] * 5
    report = json.loads((tmp_path / "runs" / "cnn" / "report.json").read_text())
    assert len(report["artifacts"]) == 10  # every format and quantization
    again = runner.invoke(app, args)
    assert [s["status"] for s in json.loads(again.stdout)] == ["skipped"] * 5


@pytest.mark.slow  # the fast loop (-m 'not slow') leaves it to CI
def test_the_export_stage_tries_every_target_and_names_each_failure(
    tmp_path, cifar_dir, monkeypatch
):
    from cifar_deploy.export import base as export_base

    def broken(source, staging, options, quantization):
        raise RuntimeError("converter crashed")

    savedmodel = export_base._FORMATS["savedmodel"]
    monkeypatch.setitem(
        export_base._FORMATS, "savedmodel", dataclasses.replace(savedmodel, fn=broken)
    )
    cfg = tiny_config(tmp_path, cifar_dir, formats=("savedmodel", "onnx"))
    results = run_pipeline(cfg)
    assert [r.status for r in results] == ["done", "failed", "not run", "not run", "not run"]
    assert results[1].detail == (
        "1 of 4 exports failed: savedmodel (none) export failed: converter crashed"
    )
    # the failure came first, and the three ONNX targets after it were still exported
    assert sorted(p.name for p in cfg.export_dir.glob("*.json")) == [
        "cnn_float16.onnx.json",
        "cnn_float32.onnx.json",
        "cnn_int8.onnx.json",
    ]


# ---------------------------------------------------------------------------------------------
# A model of the user's own: no training; export declares what the user said of it


def _user_logits_model(path: Path) -> Path:
    """A logits-head classifier written outside cifar-deploy, with a weight tensor large
    enough (over 1,024 values) for dynamic-range quantization to act on. Its Keras name is not
    its file's: runs/ and exports/ and the artifacts take the file's."""
    import keras

    keras.utils.set_random_seed(0)
    layers = keras.layers
    inputs = keras.Input((32, 32, 3))
    x = layers.Conv2D(8, 3, strides=2, activation="relu")(inputs)
    x = layers.Conv2D(16, 3, strides=2, activation="relu")(x)
    x = layers.GlobalAveragePooling2D()(x)
    keras.Model(inputs, layers.Dense(10)(x), name="their_net").save(path)
    return path


def _user_args(model: Path, tmp_path, cifar_dir, *extra) -> list[str]:
    return [
        "pipeline", str(model), "--data-dir", str(cifar_dir), "--formats", "onnx",
        "--runs-dir", str(tmp_path / "runs"), "--exports-dir", str(tmp_path / "exports"),
        "--bench-batch-sizes", "1", "--bench-min-time", "0.01", "--json", *extra,
    ]  # fmt: skip


def test_a_model_file_of_ones_own_skips_training_and_is_exported_as_declared(tmp_path, cifar_dir):
    model = _user_logits_model(tmp_path / "theirs.keras")
    result = runner.invoke(app, _user_args(model, tmp_path, cifar_dir, "--add-softmax"))
    assert result.exit_code == 0, result.output
    stages = json.loads(result.stdout)
    assert [(s["name"], s["status"]) for s in stages] == [("train", "skipped")] + [
        (s, "done") for s in STAGES[1:]
    ]
    assert stages[0]["detail"] == f"your model: {model}"
    sidecar = json.loads((tmp_path / "exports" / "theirs" / "theirs_float32.onnx.json").read_text())
    assert sidecar["added_softmax"] is True
    report = json.loads((tmp_path / "runs" / "theirs" / "report.json").read_text())
    assert report["trained_here"] is False and report["reference_path"] == str(model)
    markdown = (tmp_path / "runs" / "theirs" / "report.md").read_text()
    assert f"Not trained by cifar-deploy: the model is `{model}`." in markdown
    assert "training.png" not in markdown and not (tmp_path / "runs/theirs/training.png").exists()


@pytest.mark.slow  # the fast loop (-m 'not slow') leaves it to CI
def test_a_changed_declaration_exports_again_and_the_same_one_does_not(tmp_path, cifar_dir):
    model = _user_logits_model(tmp_path / "theirs.keras")
    first = runner.invoke(app, _user_args(model, tmp_path, cifar_dir, "--add-softmax"))
    assert first.exit_code == 0, first.output
    again = runner.invoke(app, _user_args(model, tmp_path, cifar_dir, "--add-softmax"))
    assert [s["status"] for s in json.loads(again.stdout)] == ["skipped"] * 5
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(f"kind {i}" for i in range(10)) + "\n")
    relabelled = runner.invoke(
        app, _user_args(model, tmp_path, cifar_dir, "--add-softmax", "--labels", str(labels))
    )
    assert [s["status"] for s in json.loads(relabelled.stdout)][1:] == ["done"] * 4
    sidecar = json.loads((tmp_path / "exports" / "theirs" / "theirs_int8.onnx.json").read_text())
    assert sidecar["class_names"][0] == "kind 0"


def test_a_logits_model_without_add_softmax_fails_at_export_naming_the_flag(tmp_path, cifar_dir):
    model = _user_logits_model(tmp_path / "theirs.keras")
    result = runner.invoke(app, _user_args(model, tmp_path, cifar_dir))
    assert result.exit_code == 1
    stages = {s["name"]: s for s in json.loads(result.stdout)}
    assert stages["export"]["status"] == "failed" and "--add-softmax" in stages["export"]["detail"]
    assert stages["verify"]["status"] == "not run"


@pytest.mark.parametrize(
    "args, message",
    [
        (["{model}", "--epochs", "3"], "--epochs set how our models train; received with your"),
        (["{model}", "--quick"], "--quick set how our models train"),
        (["cnn", "--preprocess", "unit"], "describe a model file of your own; received them with"),
        (["cnn", "--add-softmax"], "describe a model file of your own"),
        (["missing.keras"], "no model file at missing.keras"),
    ],
)
def test_options_that_do_not_fit_the_model_are_refused_before_any_work(tmp_path, args, message):
    model = _user_logits_model(tmp_path / "theirs.keras")
    argv = [a.format(model=model) for a in args]
    result = runner.invoke(app, ["pipeline", *argv, "--runs-dir", str(tmp_path / "runs")])
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert not (tmp_path / "runs").exists()
