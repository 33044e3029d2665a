"""The trainer: runs a recipe on CIFAR-10 and leaves the run files the export layer picks up.

Each run writes to ``<runs_dir>/<model>/``:
- ``best.keras``: the weights with the best validation accuracy (float32 model, whatever the
  training precision, so exports never inherit a mixed-precision policy);
- ``last.keras``: the latest epoch, also written on Ctrl-C, always loadable (atomic writes);
- ``history.csv``: one row per epoch (phase, learning rate, losses, accuracies, seconds);
- ``run.json``: resolved settings, dataset sizes, library versions, wall time, test accuracy.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from .. import _tf, reference
from ..contract import library_versions
from ..cpu import cpu_info
from ..data import CifarData, load_cifar10, subsample, train_val_split
from ..errors import InvalidOptionError, TrainingInterrupted
from ..tta import mirrored
from .budget import TimeBudget
from .recipes import Phase, Recipe, eval_dataset, make_loss, make_optimizer, train_dataset
from .registry import ModelSpec, get_model_spec, recipe_summary

STRATEGIES = ("none", "mirrored", "multi-worker")
MAX_BUDGET_EPOCHS = 100_000  # with a time budget, time ends training; this only bounds fit()
HISTORY_METRICS = ("loss", "accuracy", "val_loss", "val_accuracy")  # Keras logs kept per epoch


@dataclass
class TrainConfig:
    model: str
    recipe: Recipe | None = None  # None: the model's registered default
    seed: int = 42  # NumPy, TensorFlow and Python seeds
    data_dir: Path | None = None
    runs_dir: Path = Path("runs")
    max_train_samples: int | None = None
    weights: str | None = None  # MobileNetV2 only: 'imagenet', 'none' or a file
    strategy: str = "none"  # "none", "mirrored" or "multi-worker" (TF_CONFIG)
    model_kwargs: dict = field(default_factory=dict)  # extra builder arguments (tests, ablations)
    time_budget: float | None = None  # seconds of wall time for the whole run; None: epochs
    verbose: int | str = "auto"  # Keras fit verbosity: 0 silent, 1 bar, 2 line per epoch
    callbacks: list = field(default_factory=list)  # extra Keras callbacks (progress, tests)
    # With a time budget: (description or None, elapsed s, budget s), every epoch (described)
    # and about once a second (not); Keras' own epoch bar is off then ("Epoch 3/100000" says
    # nothing when time ends the run).
    on_progress: Callable[[str | None, float, float], None] | None = None


@dataclass
class RunResult:
    run_dir: Path
    best_path: Path
    last_path: Path
    history_path: Path
    run_json_path: Path
    test_accuracy: float
    best_val_accuracy: float
    epochs_run: int
    wall_seconds: float
    info: dict


def cpu_supports_bf16() -> bool:
    """True on CPUs with AMX-BF16 or AVX512-BF16, where oneDNN runs bfloat16 fast."""
    return bool({"amx_bf16", "avx512_bf16"} & cpu_info().flags)


def resolve_precision(mode: str) -> str:
    """Map a recipe's mixed-precision mode to a Keras dtype policy name."""
    tf = _tf.tf()
    has_gpu = bool(tf.config.list_physical_devices("GPU"))
    if mode == "auto":
        if has_gpu:
            return "mixed_float16"
        return "mixed_bfloat16" if cpu_supports_bf16() else "float32"
    return {"off": "float32", "bf16": "mixed_bfloat16", "fp16": "mixed_float16"}[mode]


def make_strategy(name: str):
    """``mirrored``: all GPUs, or all logical CPU devices when there is no GPU.
    (``multi-worker`` runs its own loop: see ``distributed.py``.)"""
    tf = _tf.tf()
    if name not in STRATEGIES:
        raise InvalidOptionError(
            f"unknown strategy {name!r}; expected one of: {', '.join(STRATEGIES)}"
        )
    if name == "none":
        return tf.distribute.get_strategy()
    if name == "multi-worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    gpus = tf.config.list_logical_devices("GPU")
    devices = [d.name for d in (gpus or tf.config.list_logical_devices("CPU"))]
    return tf.distribute.MirroredStrategy(devices=devices)


def save_atomic(model, path: Path) -> None:
    """Write ``path`` via a temporary file and a rename, so it is never half-written."""
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}.keras")
    try:
        model.save(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def _current_lr(optimizer) -> float:
    lr = optimizer.learning_rate
    return float(np.asarray(lr.numpy() if hasattr(lr, "numpy") else lr))


class RunRecorder:
    """The run's files: a ``history.csv`` row and the ``last.keras`` checkpoint every epoch,
    ``best.keras`` when validation accuracy improves (both written from the float32 ``twin``),
    and ``run.json`` at the end, whatever the end was."""

    def __init__(self, run_dir: Path, info: dict, started: float | None = None):
        self.run_dir = run_dir
        self.history = run_dir / "history.csv"
        self.history.unlink(missing_ok=True)
        self.info = info
        self.started = started if started is not None else time.perf_counter()
        self.best_val = -1.0
        self.best_epoch = 0
        self.epochs_run = 0
        self.model = None  # the model being trained
        self.twin = None  # its float32 twin, which checkpoints are written from
        self._epoch_start = 0.0
        self.steps_run = 0

    @property
    def best_path(self) -> Path:
        return self.run_dir / "best.keras"

    @property
    def last_path(self) -> Path:
        return self.run_dir / "last.keras"

    def callback(self, phase_name: str):
        """A Keras callback that records each epoch of ``phase_name``."""
        keras = _tf.keras()
        return keras.callbacks.LambdaCallback(
            on_epoch_begin=lambda epoch, logs: self.begin_epoch(),
            on_train_batch_end=lambda batch, logs: self.count_step(),
            on_epoch_end=lambda epoch, logs: self.end_epoch(epoch + 1, phase_name, logs or {}),
        )

    def count_step(self) -> None:
        self.steps_run += 1

    def begin_epoch(self) -> None:
        self._epoch_start = time.perf_counter()

    def end_epoch(self, epoch: int, phase_name: str, logs: dict) -> None:
        row = {
            "epoch": epoch,
            "phase": phase_name,
            "lr": f"{_current_lr(self.model.optimizer):.6g}",
            **{k: f"{logs[k]:.6f}" for k in HISTORY_METRICS if k in logs},
            "steps": self.steps_run,
            "seconds": f"{time.perf_counter() - self._epoch_start:.2f}",
        }
        new = not self.history.exists()
        with self.history.open("a", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(row))
            if new:
                writer.writeheader()
            writer.writerow(row)
        self.epochs_run = epoch
        self.save(self.last_path)
        val = logs.get("val_accuracy", -1.0)
        if val > self.best_val:
            self.best_val, self.best_epoch = float(val), epoch
            self.save(self.best_path)

    def save(self, path: Path) -> None:
        if self.twin is not self.model:
            self.twin.set_weights(self.model.get_weights())
        save_atomic(self.twin, path)

    def interrupted(self) -> TrainingInterrupted:
        """Ctrl-C: make sure ``last.keras`` exists (even before the first epoch ended), record
        the run as interrupted; returns the error to raise."""
        if self.epochs_run == 0 and self.twin is not None:
            self.save(self.last_path)
        self.finish("interrupted")
        return TrainingInterrupted(
            f"training interrupted after {self.epochs_run} epochs; "
            f"{self.last_path} holds the latest weights"
        )

    def result(self, test_accuracy: float, test_accuracy_tta: float) -> RunResult:
        """Complete the run: run.json with the test accuracy, and the run's record."""
        self.info["test_accuracy_flip_tta"] = test_accuracy_tta
        info = self.finish("completed", test_accuracy)
        return RunResult(
            run_dir=self.run_dir,
            best_path=self.best_path,
            last_path=self.last_path,
            history_path=self.history,
            run_json_path=self.run_dir / "run.json",
            test_accuracy=test_accuracy,
            best_val_accuracy=self.best_val,
            epochs_run=self.epochs_run,
            wall_seconds=info["wall_seconds"],
            info=info,
        )

    def finish(self, status: str, test_accuracy: float | None = None) -> dict:
        self.info.update(
            status=status,
            epochs_run=self.epochs_run,
            steps_run=self.steps_run,
            best_epoch=self.best_epoch,
            best_val_accuracy=self.best_val if self.best_val >= 0 else None,
            test_accuracy=test_accuracy,
            wall_seconds=round(time.perf_counter() - self.started, 2),
            finished_at=_now(),
        )
        _write_json_atomic(self.run_dir / "run.json", self.info)
        return self.info


def _budget_progress(config: TrainConfig, recorder: RunRecorder):
    """The Keras callback that reports a budgeted run's elapsed time against its budget."""
    keras = _tf.keras()
    report, budget = config.on_progress, config.time_budget
    last = [0.0]

    def tick(description: str | None = None) -> None:
        now = time.perf_counter()
        if description or now - last[0] >= 1.0:
            last[0] = now
            report(description, now - recorder.started, budget)

    def epoch_line(epoch: int, logs: dict) -> str:
        val = logs.get("val_accuracy")
        shown = f", val accuracy {val:.1%}" if val is not None else ""
        return f"epoch {epoch + 1}{shown}, {recorder.steps_run} steps"

    return keras.callbacks.LambdaCallback(
        on_train_batch_end=lambda batch, logs: tick(),
        on_epoch_end=lambda epoch, logs: tick(epoch_line(epoch, logs or {})),
    )


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _builder_kwargs(spec: ModelSpec, recipe: Recipe, config: TrainConfig) -> dict:
    """The builder's arguments: the recipe's weight decay where the builder takes one, the
    pretrained weights where the family has them, and the config's extra arguments."""
    kwargs = {}
    if spec.takes_weight_decay:
        kwargs["weight_decay"] = recipe.weight_decay
    elif recipe.weight_decay:
        raise InvalidOptionError(
            f"{spec.name} takes no weight decay (its recipe regularizes otherwise); "
            f"received --weight-decay {recipe.weight_decay:g}"
        )
    if config.weights is not None:
        if not spec.accepts_weights:
            raise InvalidOptionError(
                f"--weights applies to pretrained models only; {spec.name} trains from scratch"
            )
        kwargs["weights"] = config.weights
    return {**kwargs, **config.model_kwargs}


def _build(spec: ModelSpec, kwargs: dict, policy: str, strategy):
    """(model in ``policy``, float32 twin): the twin has the same layers in the same order, and
    its weights are copied from the model, so pretrained ones are not fetched twice."""
    keras = _tf.keras()
    keras.mixed_precision.set_global_policy(policy)
    with strategy.scope():
        model = spec.build(**kwargs)
    keras.mixed_precision.set_global_policy("float32")
    if policy == "float32":
        return model, model
    return model, spec.build(**({**kwargs, "weights": None} if spec.accepts_weights else kwargs))


def _set_trainable(spec: ModelSpec, model, phase: Phase, recipe: Recipe) -> None:
    """Every phase sets what trains, "all" included (a head -> all recipe unfreezes the backbone
    frozen by its head phase)."""
    if spec.set_trainable is not None:
        spec.set_trainable(model, phase.trainable, recipe.finetune_fraction)
    elif phase.trainable != "all":
        raise InvalidOptionError(
            f"phase {phase.name!r} trains {phase.trainable!r} layers, but {spec.name} "
            "has no backbone to freeze; expected trainable='all'"
        )


def _fit_phase(
    model,
    phase: Phase,
    recipe: Recipe,
    datasets,
    first_epoch: int,
    callbacks: list,
    verbose,
    budget: TimeBudget | None = None,
) -> None:
    """Compile for ``phase`` (its optimizer and schedule) and fit its epochs, or, with a
    ``budget``, as many epochs as its time allows, the rate set by the budget."""
    keras, tf = _tf.keras(), _tf.tf()
    train_ds, val_ds, steps_per_epoch = datasets
    epochs = phase.epochs
    if budget is not None:  # a constant-rate optimizer whose rate the budget sets every step
        phase = dataclasses.replace(phase, cosine=False, warmup_epochs=0.0)
        epochs = MAX_BUDGET_EPOCHS
        callbacks = [budget.callback(model), *callbacks]
    model.compile(
        optimizer=make_optimizer(phase, steps_per_epoch),
        loss=make_loss(recipe),
        metrics=["accuracy"],
        jit_compile="auto"
        if tf.config.list_physical_devices("GPU")
        else False,  # XLA: CPU 2x slower
    )
    if recipe.early_stopping_patience:
        callbacks = [
            *callbacks,
            keras.callbacks.EarlyStopping(
                monitor="val_accuracy", mode="max", patience=recipe.early_stopping_patience
            ),
        ]
    model.fit(
        train_ds,
        validation_data=val_ds,
        initial_epoch=first_epoch,
        epochs=first_epoch + epochs,
        callbacks=callbacks,
        verbose=verbose,
        shuffle=False,  # the dataset shuffles itself, seeded
    )


def _phase_budget(config: TrainConfig, recorder, phases: list[Phase], test_ratio: float):
    """This phase's share of what is left of the run's budget (its share of the remaining
    epochs), keeping back time for the final test evaluation after the last phase."""
    if config.time_budget is None:
        return None
    left = config.time_budget - (time.perf_counter() - recorder.started)
    if left <= 0:
        raise InvalidOptionError(
            f"the time budget of {config.time_budget:g} s ran out before phase {phases[0].name!r}"
        )
    phase = phases[0]
    return TimeBudget(
        seconds=left * phase.epochs / sum(p.epochs for p in phases),
        peak=phase.lr,
        final=phase.final_lr if phase.cosine else phase.lr,
        warmup=phase.warmup_epochs / phase.epochs,
        tail=test_ratio if len(phases) == 1 else 0.0,
    )


def _test_passes(data: CifarData, val_images: int) -> float:
    """The final test evaluation in units of one validation pass: the test split twice (plain
    and mirrored), plus one pass for loading the checkpoint back and tracing, and 20% headroom
    (a budget of 240 s ended at 240.65 s without any)."""
    return 1.2 * (2.0 * len(data.y_test) / max(val_images, 1) + 1.0)


def _evaluate_best(best_path: Path, data: CifarData) -> tuple[float, float]:
    """Test accuracy of the best checkpoint, loaded back as exports will load it, without and
    with mirror test-time augmentation. The probabilities are kept beside the checkpoint, so
    ``verify`` does not run the reference again."""
    keras = _tf.keras()
    best = keras.models.load_model(best_path, safe_mode=True)
    call = reference.compiled(best)
    plain = reference.keras_probabilities(best, data.x_test, call)
    flipped = (plain + reference.keras_probabilities(best, mirrored(data.x_test), call)) / 2.0
    reference.save(best_path, data.x_test, data.y_test, {"none": plain, "flip": flipped})
    return tuple(float(np.mean(p.argmax(1) == data.y_test)) for p in (plain, flipped))


def _run_info(config, spec, recipe, policy, strategy, kwargs, data, sizes) -> dict:
    return {
        "model": spec.name,
        "architecture": spec.description,
        "status": "running",
        "recipe": recipe.to_dict(),
        "recipe_summary": recipe_summary(recipe)
        + (
            f" (trained for a {config.time_budget:.0f} s budget instead: the schedule follows "
            "elapsed time)"
            if config.time_budget is not None
            else ""
        ),
        "seed": config.seed,
        "strategy": config.strategy,
        "replicas": strategy.num_replicas_in_sync,
        "precision_policy": policy,
        "builder_kwargs": dict(kwargs),
        "data": {
            "source": data.source,
            "train_batches": list(data.train_batches),
            "train_images": sizes[0],
            "val_images": sizes[1],
            "test_images": int(len(data.y_test)),
        },
        "versions": library_versions(),
        "device": "gpu" if _tf.tf().config.list_physical_devices("GPU") else "cpu",
        "time_budget_s": config.time_budget,
        "started_at": _now(),
    }


def _splits(config: TrainConfig, recipe: Recipe, data: CifarData):
    """((x_train, y_train), (x_val, y_val)): the seeded subsample, then a stratified split."""
    if config.max_train_samples is not None and config.max_train_samples < 2:
        raise InvalidOptionError(
            f"--max-train-samples must be at least 2, received {config.max_train_samples}"
        )
    x, y = subsample(data.x_train, data.y_train, config.max_train_samples, config.seed)
    return train_val_split(x, y, recipe.val_split, config.seed)


def train(config: TrainConfig, data: CifarData | None = None) -> RunResult:
    """Train ``config.model`` with its recipe; returns paths and figures of the run."""
    if config.strategy == "multi-worker":
        from .distributed import train_multi_worker

        return train_multi_worker(config)
    keras = _tf.keras()
    started = time.perf_counter()  # a time budget counts from here, data loading included
    spec = get_model_spec(config.model)
    recipe = config.recipe or spec.recipe
    recipe.validate()
    kwargs = _builder_kwargs(spec, recipe, config)
    keras.utils.set_random_seed(config.seed)
    data = data if data is not None else load_cifar10(config.data_dir)
    (x_tr, y_tr), (x_val, y_val) = _splits(config, recipe, data)
    run_dir = Path(config.runs_dir) / spec.name
    run_dir.mkdir(parents=True, exist_ok=True)
    policy, strategy = resolve_precision(recipe.mixed_precision), make_strategy(config.strategy)
    sizes = (int(len(y_tr)), int(len(y_val)))
    info = _run_info(config, spec, recipe, policy, strategy, kwargs, data, sizes)
    recorder = RunRecorder(run_dir, info, started)
    previous_policy = keras.mixed_precision.global_policy().name
    try:
        recorder.model, recorder.twin = _build(spec, kwargs, policy, strategy)
        if spec.fit_to_data is not None:
            for model in {id(m): m for m in (recorder.model, recorder.twin)}.values():
                spec.fit_to_data(model, x_tr)
        datasets = (
            train_dataset(x_tr, y_tr, recipe, config.seed),
            eval_dataset(x_val, y_val, recipe.batch_size),
            max(1, len(y_tr) // recipe.batch_size),  # steps per epoch
        )
        phases = [p for p in recipe.phases if p.epochs > 0]
        for i, phase in enumerate(phases):
            _set_trainable(spec, recorder.model, phase, recipe)
            callbacks = [recorder.callback(phase.name), *config.callbacks]
            verbose = config.verbose
            if config.time_budget is not None and config.on_progress is not None:
                callbacks.append(_budget_progress(config, recorder))
                verbose = 0
            budget = _phase_budget(config, recorder, phases[i:], _test_passes(data, sizes[1]))
            with strategy.scope():
                first = recorder.epochs_run
                _fit_phase(
                    recorder.model,
                    phase,
                    recipe,
                    datasets,
                    first,
                    callbacks,
                    verbose,
                    budget,
                )
    except KeyboardInterrupt:
        raise recorder.interrupted() from None
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)
    return recorder.result(*_evaluate_best(recorder.best_path, data))
