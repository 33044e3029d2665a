"""Wall-clock training budgets: the learning-rate schedule follows elapsed time, not steps.

With a budget the schedule's position is the elapsed share of the budget (budgeted training,
Li et al., ICLR 2020): linear warmup over the recipe's warmup share, then cosine to the final rate,
which it reaches exactly when the time is up, on a fast machine or a slow one, and also when the
machine slows down mid-run. Validation and checkpoints run inside the budget: training stops early
enough for one more validation pass (as long as the latest one) and, after the last phase, the
test evaluation (scaled from it by the number of images) to fit.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable

from .. import _tf
from ..errors import InvalidOptionError

_UNITS = {"s": 1, "m": 60, "h": 3600}


def parse_duration(text: str) -> float:
    """Seconds from ``"90"``, ``"90s"``, ``"8m"``, ``"1.5h"`` or ``"1h30m"``."""
    value = str(text).strip().lower()
    parts = re.fullmatch(r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s?)?", value)
    if not value or parts is None or not any(parts.groups()):
        raise InvalidOptionError(
            f"--time-budget must be a duration like 90s, 8m or 1h30m, received {text!r}"
        )
    hours, minutes, seconds = (float(g) if g else 0.0 for g in parts.groups())
    total = hours * 3600 + minutes * 60 + seconds
    if not math.isfinite(total) or total <= 0:
        raise InvalidOptionError(f"--time-budget must be more than 0 seconds, received {text!r}")
    return total


def budget_lr(fraction: float, peak: float, final: float, warmup: float) -> float:
    """The rate at ``fraction`` (0..1) of the budget: linear warmup to ``peak`` over ``warmup``
    (a share of the budget), then cosine to ``final`` at 1."""
    fraction = min(max(fraction, 0.0), 1.0)
    if warmup > 0 and fraction < warmup:
        return peak * fraction / warmup
    progress = (fraction - warmup) / (1.0 - warmup) if warmup < 1 else 1.0
    return final + 0.5 * (peak - final) * (1.0 + math.cos(math.pi * progress))


class TimeBudget:
    """A Keras callback factory: sets the rate before every step from the elapsed time, counts
    steps, and stops training when what is left would not fit one more validation pass."""

    def __init__(
        self,
        seconds: float,
        peak: float,
        final: float,
        warmup: float,
        tail: float = 0.0,
        clock: Callable[[], float] = time.perf_counter,
    ):
        """``seconds`` for this stretch of training; ``tail``: how many more validation passes'
        worth of time to keep back after it (the final test evaluation, in units of the longest
        validation pass)."""
        self.seconds, self.peak, self.final, self.warmup = seconds, peak, final, warmup
        self.tail = tail
        self.clock = clock
        self.started: float | None = None
        self.steps = 0
        self.validation_seconds = 0.0  # the latest validation pass (the first one also traces)
        self._validation_started = 0.0
        self.stopped_by_budget = False

    def fraction(self) -> float:
        """Elapsed share of the time available for training steps."""
        usable = max(self.seconds - (1.0 + self.tail) * self.validation_seconds, 1e-9)
        return (self.clock() - self.started) / usable

    def rate(self) -> float:
        return budget_lr(self.fraction(), self.peak, self.final, self.warmup)

    def start(self) -> None:
        if self.started is None:
            self.started = self.clock()

    def before_step(self, model) -> None:
        model.optimizer.learning_rate.assign(self.rate())

    def after_step(self, model) -> None:
        self.steps += 1
        if self.fraction() >= 1.0:
            self.stopped_by_budget = True
            model.stop_training = True

    def validation_begins(self) -> None:
        self._validation_started = self.clock()

    def validation_ends(self) -> None:
        self.validation_seconds = self.clock() - self._validation_started

    def callback(self, model):
        """The Keras callback that drives ``model``'s rate and stops it."""
        keras = _tf.keras()
        return keras.callbacks.LambdaCallback(
            on_train_begin=lambda logs: self.start(),
            on_train_batch_begin=lambda batch, logs: self.before_step(model),
            on_train_batch_end=lambda batch, logs: self.after_step(model),
            on_test_begin=lambda logs: self.validation_begins(),
            on_test_end=lambda logs: self.validation_ends(),
        )
