"""Specification of `--quick` as a time promise: the whole pipeline within 15 minutes on any
machine, training given what the later stages will not need, and the reference's predictions
computed once (by training) and reused by verify."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cifar_deploy import pipeline, reference
from cifar_deploy.checks.verify import verify
from cifar_deploy.data import load_cifar10
from cifar_deploy.pipeline import PipelineConfig, plan_budget, run_pipeline
from cifar_deploy.training import resolve_time_budget
from cifar_deploy.training.trainer import TrainConfig, train
from tests.helpers import TINY_CNN, TINY_SEED, save_tiny_model

# ---------------------------------------------------------------------------------------------
# What --quick means


def test_quick_training_is_a_ten_minute_budget_unless_epochs_are_asked_for():
    assert resolve_time_budget("cnn", quick=True) == 600.0
    assert resolve_time_budget("cnn", quick=True, epochs=3) is None  # reproducible runs
    assert resolve_time_budget("cnn", quick=True, time_budget=90.0) == 90.0
    assert resolve_time_budget("cnn") is None


def test_quick_pipeline_is_a_fifteen_minute_budget_for_every_stage():
    assert PipelineConfig(quick=True).budget == 15 * 60
    assert PipelineConfig(quick=True, epochs=2).budget is None
    assert PipelineConfig(quick=True, time_budget=300.0).budget is None  # a training budget
    assert PipelineConfig(total_budget=120.0).budget == 120.0
    assert PipelineConfig().budget is None


# ---------------------------------------------------------------------------------------------
# The plan: estimates from the machine's measured inference rate


def plan(rate: float, **kw):
    return plan_budget(900.0, rate, 9, (1, 8, 32, 64), 0.5, started=0.0, **kw)


def test_a_slower_machine_keeps_more_time_back_for_the_later_stages():
    fast, slow = plan(1000.0), plan(250.0)
    assert slow.export == pytest.approx(4 * fast.export)
    assert slow.after_training > fast.after_training
    assert slow.training_seconds(now=10.0) < fast.training_seconds(now=10.0)


def test_training_gets_what_is_left_after_the_estimates_and_the_time_already_spent():
    p = plan(1000.0)
    assert p.training_seconds(now=30.0) == pytest.approx(900.0 - 30.0 - p.after_training)
    assert p.training_seconds(now=899.0) == pipeline.MIN_TRAIN_SECONDS


def test_verify_runs_the_whole_split_when_it_fits_its_share_and_a_sample_otherwise():
    assert plan(2000.0).verify_samples is None  # 9 x 10,000 images at 2,000/s: 45 s
    slow = plan(250.0)  # 360 s for the whole split: more than a quarter of 900 s
    assert pipeline.MIN_VERIFY_SAMPLES <= slow.verify_samples < pipeline.TEST_IMAGES
    assert slow.verify <= pipeline.VERIFY_SHARE * 900.0
    assert plan(250.0, verify_samples=10_000).verify_samples == 10_000  # asked for: kept
    assert plan(10.0).verify_samples == pipeline.MIN_VERIFY_SAMPLES  # never fewer


def test_verify_is_planned_again_when_it_starts_from_the_time_left():
    p = plan(1000.0)  # whole split planned: 9 x 10,000 images at 1,000/s
    on_time = p.started + 900.0 - p.after_training - 1.0  # training ended as planned
    assert p.verify_samples_now(9, p.export, on_time) is None
    late = on_time + 100.0  # training and export ran long: less time is left
    fewer = p.verify_samples_now(9, p.export, late)
    assert pipeline.MIN_VERIFY_SAMPLES <= fewer < pipeline.TEST_IMAGES
    slower = p.verify_samples_now(9, 3 * p.export, late)  # export ran 3x its estimate
    assert slower < fewer
    assert p.verify_samples_now(9, p.export, p.started + 899.0) == pipeline.MIN_VERIFY_SAMPLES


@pytest.mark.slow  # the fast loop (-m 'not slow') leaves it to CI
def test_a_budgeted_pipeline_records_its_plan_and_trains_within_its_share(
    tmp_path, cifar_dir, monkeypatch
):
    monkeypatch.setattr(pipeline, "MARGIN_SECONDS", 0.0)
    monkeypatch.setattr(pipeline, "REPORT_SECONDS", 0.0)
    monkeypatch.setattr(pipeline, "MIN_TRAIN_SECONDS", 1.0)
    cfg = PipelineConfig(
        model="cnn",
        quick=True,
        total_budget=25.0,
        data_dir=cifar_dir,
        runs_dir=tmp_path / "runs",
        exports_dir=tmp_path / "exports",
        formats=("onnx",),
        bench_batch_sizes=(1,),
        bench_min_time=0.01,
        model_kwargs=TINY_CNN,
    )
    results = run_pipeline(cfg)
    assert [r.status for r in results] == ["done"] * 5, results
    record = json.loads((cfg.run_dir / "pipeline.json").read_text())
    run = json.loads((cfg.run_dir / "run.json").read_text())
    assert record["budget_seconds"] == 25.0 and record["plan"]["rate"] > 0
    assert record["wall_seconds"] >= sum(r.seconds for r in results)
    assert 0 < run["time_budget_s"] <= 25.0 - record["plan"]["after_training"]
    assert "training budget" in results[0].detail
    assert record["plan"]["spent"]["train"] == pytest.approx(results[0].seconds)
    assert results[2].detail.endswith("test images")


# ---------------------------------------------------------------------------------------------
# Training's progress against its budget


def budgeted(tmp_path, data_dir, seconds: float, **kw) -> TrainConfig:
    """The tiny CNN trained for ``seconds`` of wall time."""
    return TrainConfig(
        model="cnn",
        data_dir=data_dir,
        runs_dir=tmp_path / "runs",
        model_kwargs=TINY_CNN,
        verbose=0,
        time_budget=seconds,
        **kw,
    )


def test_a_budgeted_run_reports_each_epoch_and_its_elapsed_time(tmp_path, cifar_dir):
    reports = []
    result = train(budgeted(tmp_path, cifar_dir, 6.0, on_progress=lambda *r: reports.append(r)))
    epochs = [r for r in reports if r[0]]
    assert len(epochs) == result.epochs_run
    assert epochs[0][0].startswith("epoch 1, val accuracy")
    assert all(budget == 6.0 for _, _, budget in reports)
    elapsed = [e for _, e, _ in reports]
    assert elapsed == sorted(elapsed)


# ---------------------------------------------------------------------------------------------
# The reference's predictions: computed once


def test_training_keeps_the_reference_predictions_and_verify_reuses_them(tmp_path, cifar_dir):
    result = train(budgeted(tmp_path, cifar_dir, 4.0))
    data = load_cifar10(cifar_dir)
    kept = reference.load(result.best_path, data.x_test, data.y_test)
    assert set(kept) == {"none", "flip"}
    assert float(np.mean(kept["none"].argmax(1) == data.y_test)) == result.test_accuracy
    progress = []
    (row,) = verify(
        [],
        reference=result.best_path,
        data=data,
        on_progress=lambda *p: progress.append(p),
    )
    assert row.runtime.endswith("(kept by training)")
    assert row.accuracy == result.test_accuracy
    assert progress == [("done", 0, 0)]  # nothing left to run


def test_a_stale_cache_is_ignored(tmp_path, cifar_dir):
    model_path = save_tiny_model(tmp_path / "runs")
    data = load_cifar10(cifar_dir)
    fake = np.full((len(data.y_test), 10), 0.1, np.float32)
    reference.save(model_path, data.x_test, data.y_test, {"none": fake})
    assert reference.load(model_path, data.x_test, data.y_test)  # matches: used
    assert reference.load(model_path, data.x_test[::-1], data.y_test) == {}  # other images
    save_tiny_model(tmp_path / "runs", seed=TINY_SEED + 1)  # the model file changes
    assert reference.load(model_path, data.x_test, data.y_test) == {}
    (row,) = verify([], reference=model_path, data=data)
    assert row.runtime == "tensorflow /CPU:0"  # recomputed, not taken from the stale file
