"""Specification of wall-clock training budgets: the schedule follows elapsed time."""

from __future__ import annotations

import csv
import json

import pytest

from cifar_deploy.errors import InvalidOptionError
from cifar_deploy.training import resolve_recipe
from cifar_deploy.training.budget import TimeBudget, budget_lr, parse_duration
from cifar_deploy.training.trainer import TrainConfig, train
from tests.helpers import TINY_CNN


@pytest.mark.parametrize(
    "text, seconds", [("90", 90), ("90s", 90), ("8m", 480), ("1.5h", 5400), ("1h30m", 5400)]
)
def test_durations_parse_to_seconds(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "0", "8 minutes", "-5m", "m", "1x"])
def test_bad_durations_are_refused(text):
    with pytest.raises(InvalidOptionError, match="--time-budget"):
        parse_duration(text)


def test_the_rate_warms_up_then_ends_on_the_final_rate_with_the_budget():
    peak, final, warmup = 0.1, 0.001, 0.1
    assert budget_lr(0.0, peak, final, warmup) == 0.0
    assert budget_lr(0.05, peak, final, warmup) == pytest.approx(0.05)  # half way up
    assert budget_lr(0.1, peak, final, warmup) == pytest.approx(peak)
    assert budget_lr(0.55, peak, final, warmup) == pytest.approx((peak + final) / 2)
    assert budget_lr(1.0, peak, final, warmup) == pytest.approx(final)
    assert budget_lr(3.0, peak, final, warmup) == pytest.approx(final)  # never below the floor
    decay = [budget_lr(f / 10, peak, final, warmup) for f in range(1, 11)]
    assert decay == sorted(decay, reverse=True)


class FakeModel:
    class Optimizer:
        class Rate:
            value = None

            def assign(self, value):
                self.value = value

        learning_rate = Rate()

    optimizer = Optimizer()
    stop_training = False


def run_until_stopped(seconds_per_step: float) -> tuple[TimeBudget, list[float]]:
    """A 100 s budget on a machine whose steps take ``seconds_per_step`` (a fake clock)."""
    now = [0.0]
    budget = TimeBudget(100.0, peak=0.1, final=0.0, warmup=0.05, clock=lambda: now[0])
    model = FakeModel()
    model.stop_training = False
    budget.start()
    rates = []
    while not model.stop_training:
        budget.before_step(model)
        rates.append(model.optimizer.learning_rate.value)
        now[0] += seconds_per_step
        budget.after_step(model)
    return budget, rates


@pytest.mark.parametrize("seconds_per_step, steps", [(1.0, 100), (2.5, 40)])
def test_a_slower_machine_takes_fewer_steps_and_still_ends_on_the_final_rate(
    seconds_per_step, steps
):
    budget, rates = run_until_stopped(seconds_per_step)
    assert budget.steps == steps and budget.stopped_by_budget
    assert max(rates) == pytest.approx(0.1, rel=0.05)  # the warmup reached the peak
    assert rates[-1] < 0.001  # and the cosine ran to its end


def test_time_is_kept_back_for_validation_and_the_final_test_pass():
    now = [0.0]
    budget = TimeBudget(100.0, peak=0.1, final=0.0, warmup=0.0, tail=2.0, clock=lambda: now[0])
    budget.start()
    budget.validation_begins()
    now[0] += 10.0  # one validation pass of 10 s: 10 for it and 2 x 10 for the test pass
    budget.validation_ends()
    assert budget.fraction() == pytest.approx(10.0 / 70.0)


@pytest.mark.slow  # the fast loop (-m 'not slow') leaves it to CI
def test_a_budgeted_run_records_its_budget_steps_and_epochs(tmp_path, cifar_dir):
    recipe = resolve_recipe("cnn", batch_size=32, mixed_precision="off")
    config = TrainConfig(
        model="cnn",
        recipe=recipe,
        data_dir=cifar_dir,
        runs_dir=tmp_path / "runs",
        model_kwargs=TINY_CNN,
        verbose=0,
        time_budget=10.0,
    )
    result = train(config)
    info = json.loads(result.run_json_path.read_text())
    rows = list(csv.DictReader(open(result.history_path)))
    assert info["time_budget_s"] == 10.0 and info["status"] == "completed"
    assert info["epochs_run"] == len(rows) >= 1
    assert info["steps_run"] == int(rows[-1]["steps"]) >= len(rows)
    assert float(rows[-1]["lr"]) < 0.2 * recipe.phases[0].lr  # the cosine ran to its end
