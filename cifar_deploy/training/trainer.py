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
import json
import os
import platform
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from .. import __version__, _tf
from ..data import CifarData, load_cifar10, subsample, train_val_split
from ..errors import InvalidOptionError, TrainingInterrupted
from .recipes import Recipe, eval_dataset, make_loss, make_optimizer, train_dataset
from .registry import get_model_spec

STRATEGIES = ("none", "mirrored")


@dataclass
class TrainConfig:
    model: str
    recipe: Recipe | None = None  # None: the model's registered default
    seed: int = 42  # NumPy, TensorFlow and Python seeds
    data_dir: str | None = None
    runs_dir: str = "runs"
    max_train_samples: int | None = None
    weights: str | None = None  # MobileNetV2 only: 'imagenet', 'none' or a file
    strategy: str = "none"  # "none" or "mirrored"
    model_kwargs: dict = field(default_factory=dict)  # extra builder arguments (tests, ablations)
    verbose: int | str = "auto"  # Keras fit verbosity: 0 silent, 1 bar, 2 line per epoch
    callbacks: list = field(default_factory=list)  # extra Keras callbacks (progress, tests)


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


def library_versions() -> dict[str, str]:
    tf, keras = _tf.tf(), _tf.keras()
    return {
        "cifar_deploy": __version__,
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


def cpu_supports_bf16() -> bool:
    """True on CPUs with AMX-BF16 or AVX512-BF16, where oneDNN runs bfloat16 fast."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


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
    """``mirrored``: all GPUs, or all logical CPU devices when there is no GPU."""
    tf = _tf.tf()
    if name not in STRATEGIES:
        raise InvalidOptionError(
            f"unknown strategy {name!r}; expected one of: {', '.join(STRATEGIES)}"
        )
    if name == "none":
        return tf.distribute.get_strategy()
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


def _callbacks(model, twin, run_dir: Path, phase_name: str, state: dict):
    """Per-epoch bookkeeping: history row, last/best checkpoints (through the float32 twin)."""
    keras = _tf.keras()

    class RunFiles(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            state["epoch_start"] = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            logs = logs or {}
            seconds = time.perf_counter() - state["epoch_start"]
            row = {
                "epoch": epoch + 1,
                "phase": phase_name,
                "lr": f"{_current_lr(model.optimizer):.6g}",
                **{k: f"{logs[k]:.6f}" for k in ("loss", "accuracy", "val_loss", "val_accuracy")
                   if k in logs},  # fmt: skip
                "seconds": f"{seconds:.2f}",
            }
            new = not state["history"].exists()
            with state["history"].open("a", newline="") as fh:
                writer = csv.DictWriter(fh, fieldnames=list(row))
                if new:
                    writer.writeheader()
                writer.writerow(row)
            state["epochs_run"] = epoch + 1
            if twin is not model:
                twin.set_weights(model.get_weights())
            save_atomic(twin, run_dir / "last.keras")
            val = logs.get("val_accuracy", -1.0)
            if val > state["best_val"]:
                state["best_val"] = float(val)
                state["best_epoch"] = epoch + 1
                save_atomic(twin, run_dir / "best.keras")

    return RunFiles()


def train(config: TrainConfig, data: CifarData | None = None) -> RunResult:
    """Train ``config.model`` with its recipe; returns paths and figures of the run."""
    tf, keras = _tf.tf(), _tf.keras()
    spec = get_model_spec(config.model)
    recipe = config.recipe or spec.recipe
    recipe.validate()
    if config.max_train_samples is not None and config.max_train_samples < 2:
        raise InvalidOptionError(
            f"--max-train-samples must be at least 2, received {config.max_train_samples}"
        )
    build_kwargs = {"weight_decay": recipe.weight_decay, **config.model_kwargs}
    if spec.accepts_weights and config.weights is not None:
        build_kwargs["weights"] = config.weights
    elif config.weights is not None:
        raise InvalidOptionError(
            f"--weights applies to pretrained models only; {spec.name} trains from scratch"
        )
    started = time.perf_counter()
    started_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    keras.utils.set_random_seed(config.seed)

    data = data if data is not None else load_cifar10(config.data_dir)
    x, y = subsample(data.x_train, data.y_train, config.max_train_samples, config.seed)
    (x_tr, y_tr), (x_val, y_val) = train_val_split(x, y, recipe.val_split, config.seed)

    run_dir = Path(config.runs_dir) / spec.name
    run_dir.mkdir(parents=True, exist_ok=True)
    history = run_dir / "history.csv"
    history.unlink(missing_ok=True)


    policy = resolve_precision(recipe.mixed_precision)
    previous_policy = keras.mixed_precision.global_policy().name
    strategy = make_strategy(config.strategy)
    has_gpu = bool(tf.config.list_physical_devices("GPU"))
    state = {"history": history, "best_val": -1.0, "best_epoch": 0, "epochs_run": 0}
    info = {
        "model": spec.name,
        "status": "running",
        "recipe": recipe.to_dict(),
        "seed": config.seed,
        "strategy": config.strategy,
        "replicas": strategy.num_replicas_in_sync,
        "precision_policy": policy,
        "builder_kwargs": {k: v for k, v in build_kwargs.items()},
        "data": {
            "source": data.source,
            "train_batches": list(data.train_batches),
            "train_images": int(len(y_tr)),
            "val_images": int(len(y_val)),
            "test_images": int(len(data.y_test)),
        },
        "versions": library_versions(),
        "device": "gpu" if has_gpu else "cpu",
        "started_at": started_at,
    }

    def finish(status: str, test_acc: float | None = None) -> dict:
        info.update(
            status=status,
            epochs_run=state["epochs_run"],
            best_epoch=state["best_epoch"],
            best_val_accuracy=state["best_val"] if state["best_val"] >= 0 else None,
            test_accuracy=test_acc,
            wall_seconds=round(time.perf_counter() - started, 2),
            finished_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        )
        _write_json_atomic(run_dir / "run.json", info)
        return info

    try:
        keras.mixed_precision.set_global_policy(policy)
        with strategy.scope():
            model = spec.build(**build_kwargs)
        keras.mixed_precision.set_global_policy("float32")
        # The float32 twin that checkpoints are written from (same layers, same weight order);
        # its weights are copied from the trained model, so pretrained ones are not fetched again.
        twin_kwargs = {**build_kwargs, "weights": None} if spec.accepts_weights else build_kwargs
        twin = model if policy == "float32" else spec.build(**twin_kwargs)
        global_batch = recipe.batch_size
        train_ds = train_dataset(x_tr, y_tr, recipe, config.seed)
        val_ds = eval_dataset(x_val, y_val, global_batch)
        steps_per_epoch = max(1, len(y_tr) // global_batch)
        epoch = 0
        for phase in recipe.phases:
            if phase.epochs == 0:
                continue
            if phase.trainable != "all":
                if spec.set_trainable is None:
                    raise InvalidOptionError(
                        f"phase {phase.name!r} trains {phase.trainable!r} layers, but {spec.name} "
                        "has no backbone to freeze; expected trainable='all'"
                    )
                spec.set_trainable(model, phase.trainable, recipe.finetune_fraction)
            with strategy.scope():
                model.compile(
                    optimizer=make_optimizer(phase, steps_per_epoch),
                    loss=make_loss(recipe),
                    metrics=["accuracy"],
                    jit_compile="auto" if has_gpu else False,  # XLA halves CPU speed here
                )
            callbacks = [_callbacks(model, twin, run_dir, phase.name, state), *config.callbacks]
            if recipe.early_stopping_patience:
                callbacks.append(
                    keras.callbacks.EarlyStopping(
                        monitor="val_accuracy", mode="max",
                        patience=recipe.early_stopping_patience,
                    )  # fmt: skip
                )
            model.fit(
                train_ds, validation_data=val_ds, initial_epoch=epoch,
                epochs=epoch + phase.epochs, callbacks=callbacks, verbose=config.verbose,
                shuffle=False,  # the dataset shuffles itself, seeded
            )  # fmt: skip
            epoch = state["epochs_run"]
    except KeyboardInterrupt:
        if state["epochs_run"] == 0 and "twin" in locals():
            save_atomic(twin, run_dir / "last.keras")
        finish("interrupted")
        raise TrainingInterrupted(
            f"training interrupted after {state['epochs_run']} epochs; "
            f"{run_dir / 'last.keras'} holds the latest weights"
        ) from None
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)

    best = keras.models.load_model(run_dir / "best.keras", safe_mode=True)
    probs = best.predict(eval_dataset(data.x_test, data.y_test, 256).map(lambda a, b: a),
                         verbose=0)  # fmt: skip
    test_acc = float(np.mean(np.argmax(probs, axis=1) == data.y_test))
    info = finish("completed", test_acc)
    return RunResult(
        run_dir=run_dir,
        best_path=run_dir / "best.keras",
        last_path=run_dir / "last.keras",
        history_path=history,
        run_json_path=run_dir / "run.json",
        test_accuracy=test_acc,
        best_val_accuracy=state["best_val"],
        epochs_run=state["epochs_run"],
        wall_seconds=info["wall_seconds"],
        info=info,
    )


