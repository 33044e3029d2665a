"""``cifar-deploy train``: one registered model with its recipe."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from .. import console
from .common import (
    DataDir,
    JsonFlag,
    Opt,
    Precision,
    RunsDir,
    Strategy,
    _training_verbosity,
    app,
    finite,
    handles_errors,
)


@app.command("train")
@handles_errors
def train_cmd(
    model: Annotated[
        str, typer.Argument(help="airbench, cnn, mobilenetv2, wrn-28-10 (any wrn-D-W).")
    ],
    quick: Annotated[
        bool,
        Opt(help="airbench or cnn: a 10-minute budget on any machine (with --epochs: N epochs)."),
    ] = False,
    epochs: Annotated[Optional[int], Opt(help="Epochs of the main phase.", min=1)] = None,
    time_budget: Annotated[
        Optional[str], Opt(help="Train for this wall time (90s, 8m, 1h30m) instead of epochs.")
    ] = None,
    batch_size: Annotated[Optional[int], Opt(help="Images per step.", min=1)] = None,
    lr: Annotated[
        Optional[float], Opt(help="Peak learning rate of the main phase.", callback=finite)
    ] = None,
    warmup_epochs: Annotated[
        Optional[float], Opt(help="Linear warmup epochs.", min=0, callback=finite)
    ] = None,
    final_lr: Annotated[
        Optional[float], Opt(help="Learning rate the cosine ends at.", min=0, callback=finite)
    ] = None,
    label_smoothing: Annotated[
        Optional[float], Opt(help="Label smoothing, 0..1.", min=0, max=1, callback=finite)
    ] = None,
    mixup_alpha: Annotated[
        Optional[float], Opt(help="MixUp Beta(a, a); 0 disables.", min=0, callback=finite)
    ] = None,
    weight_decay: Annotated[
        Optional[float], Opt(help="L2 coefficient on kernels.", min=0, callback=finite)
    ] = None,
    crop_padding: Annotated[
        Optional[int], Opt(help="Random-crop padding, pixels; 0: none.", min=0)
    ] = None,
    flip: Annotated[
        Optional[bool], Opt("--flip/--no-flip", help="Random horizontal flips.")
    ] = None,
    patience: Annotated[
        Optional[int], Opt(help="Early-stopping patience in epochs.", min=1)
    ] = None,
    data_dir: DataDir = None,
    runs_dir: RunsDir = Path("runs"),
    max_train_samples: Annotated[
        Optional[int], Opt(help="Train on at most N images.", min=1)
    ] = None,
    val_split: Annotated[
        Optional[float], Opt(help="Share held out for validation.", callback=finite)
    ] = None,
    seed: Annotated[
        int, Opt(help="Seed for NumPy, TensorFlow and Python.", min=0, max=2**32 - 1)
    ] = 42,
    weights: Annotated[Optional[str], Opt(help="MobileNetV2: imagenet, none or a file.")] = None,
    strategy: Annotated[
        Strategy, Opt(help="mirrored: all GPUs (or CPUs); multi-worker: the machines in TF_CONFIG.")
    ] = Strategy.none,
    mixed_precision: Annotated[
        Optional[Precision], Opt(help="auto: bf16 on AMX/AVX512-BF16 CPUs, fp16 on GPUs.")
    ] = None,
    json_out: JsonFlag = False,
):
    """Train a model with its published recipe; writes runs/<model>/best.keras and run files."""
    from ..training import resolve_recipe, resolve_time_budget
    from ..training.budget import parse_duration
    from ..training.trainer import TrainConfig, train

    budget = resolve_time_budget(
        model, quick, epochs, parse_duration(time_budget) if time_budget else None
    )
    recipe = resolve_recipe(
        model,
        quick=quick,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        warmup_epochs=warmup_epochs,
        final_lr=final_lr,
        label_smoothing=label_smoothing,
        mixup_alpha=mixup_alpha,
        weight_decay=weight_decay,
        crop_padding=crop_padding,
        flip=flip,
        early_stopping_patience=patience,
        val_split=val_split,
        mixed_precision=mixed_precision.value if mixed_precision else None,
    )
    config = TrainConfig(
        model=model,
        recipe=recipe,
        seed=seed,
        runs_dir=runs_dir,
        weights=weights,
        data_dir=data_dir,
        max_train_samples=max_train_samples,
        strategy=strategy.value,
        time_budget=budget,
        verbose=_training_verbosity(json_out),
    )
    with _budget_bar(config) as _, contextlib.redirect_stdout(sys.stderr):  # Keras: stderr
        result = train(config)
    if json_out:
        return console.print_json(result.info)
    console.out.print(console.train_table(result))


@contextlib.contextmanager
def _budget_bar(config):
    """With a time budget, the trainer reports to a bar of elapsed and remaining time (Keras'
    epoch bar counts epochs the budget decides); without one, Keras' bar is the progress."""
    if config.time_budget is None:
        yield None
        return
    with console.progress("training", total=config.time_budget, lines=True, timed=True) as bar:
        config.on_progress = console.budget_reporter(bar)
        yield bar
