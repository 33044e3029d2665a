"""Specification of training runs: run files, checkpoints, interruption, distribution."""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from cifar_deploy import _tf
from cifar_deploy.data import load_cifar10, train_val_split
from cifar_deploy.errors import InvalidOptionError, TrainingInterrupted
from cifar_deploy.training import create_model, resolve_recipe
from cifar_deploy.training.trainer import TrainConfig, train
from tests.helpers import REPO, TINY_CNN, write_cifar_dir


def tiny_config(tmp_path, data_dir, **kw):
    recipe = resolve_recipe(
        "cnn",
        epochs=kw.pop("epochs", 1),
        warmup_epochs=0,
        batch_size=32,
        mixed_precision=kw.pop("mixed_precision", "off"),
    )
    return TrainConfig(
        model="cnn",
        recipe=recipe,
        data_dir=data_dir,
        runs_dir=tmp_path / "runs",
        model_kwargs=TINY_CNN,
        verbose=0,
        **kw,
    )


def test_one_epoch_writes_every_run_file(tmp_path, cifar_dir):
    result = train(tiny_config(tmp_path, cifar_dir))
    run = tmp_path / "runs" / "cnn"
    assert {p.name for p in run.iterdir()} == {
        "best.keras",
        "last.keras",
        "history.csv",
        "run.json",
        "best.predictions.npz",  # the test split's probabilities, for verify
    }
    rows = list(csv.DictReader(open(run / "history.csv")))
    assert len(rows) == 1 and rows[0]["epoch"] == "1" and rows[0]["phase"] == "train"
    assert {"lr", "loss", "accuracy", "val_loss", "val_accuracy", "seconds"} <= set(rows[0])
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "completed" and info["epochs_run"] == 1
    assert info["data"] == {
        "source": info["data"]["source"],
        "train_batches": ["data_batch_1", "data_batch_2"],
        "train_images": 108,
        "val_images": 12,
        "test_images": 60,
    }
    assert info["recipe"]["batch_size"] == 32 and info["seed"] == 42
    assert {"tensorflow", "keras", "numpy", "python"} <= set(info["versions"])
    assert info["wall_seconds"] > 0
    # The recorded test accuracy is the best checkpoint's accuracy on the test split.
    keras = _tf.keras()
    best = keras.models.load_model(run / "best.keras", safe_mode=True)
    data = load_cifar10(cifar_dir, download=False)
    acc = np.mean(
        np.argmax(best.predict(data.x_test.astype("float32"), verbose=0), 1) == data.y_test
    )
    assert info["test_accuracy"] == pytest.approx(acc) == pytest.approx(result.test_accuracy)


@pytest.mark.slow
def test_training_learns_the_synthetic_classes(tmp_path):
    # 800 images: enough steps for batch-norm moving statistics to settle before evaluation.
    data_dir = write_cifar_dir(tmp_path / "data", per_batch=400, test=100).parent
    result = train(tiny_config(tmp_path, data_dir, epochs=6))
    assert result.test_accuracy >= 0.5  # chance is 0.1; colours separate the classes


@pytest.mark.slow  # the fast loop (-m 'not slow') leaves it to CI
def test_mixed_precision_checkpoints_are_float32(tmp_path, cifar_dir):
    train(tiny_config(tmp_path, cifar_dir, mixed_precision="bf16"))
    keras = _tf.keras()
    info = json.loads((tmp_path / "runs" / "cnn" / "run.json").read_text())
    assert info["precision_policy"] == "mixed_bfloat16"
    best = keras.models.load_model(tmp_path / "runs" / "cnn" / "best.keras")
    assert {layer.dtype_policy.name for layer in best.layers} == {"float32"}
    assert keras.mixed_precision.global_policy().name == "float32"  # restored after training


@pytest.mark.slow  # the fast loop (-m 'not slow') leaves it to CI
def test_ctrl_c_leaves_a_loadable_last_checkpoint(tmp_path, cifar_dir):
    keras = _tf.keras()

    class CtrlC(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                raise KeyboardInterrupt

    config = tiny_config(tmp_path, cifar_dir, epochs=5, callbacks=[CtrlC()])
    with pytest.raises(TrainingInterrupted, match="interrupted after 2 epochs"):
        train(config)
    run = tmp_path / "runs" / "cnn"
    model = keras.models.load_model(run / "last.keras")
    assert model.output_shape == (None, 10)
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "interrupted" and info["epochs_run"] == 2
    assert not [p for p in run.iterdir() if p.name.startswith(".")]  # no temporary leftovers


@pytest.mark.slow
def test_mirrored_strategy_on_two_logical_cpus(tmp_path, cifar_dir):
    # Logical devices must be configured before TensorFlow starts, so this runs in a subprocess.
    script = textwrap.dedent(f"""
        import json, sys
        from cifar_deploy import _tf
        tf = _tf.tf()
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        sys.path.insert(0, {str(REPO)!r})
        from tests.test_trainer import tiny_config
        from cifar_deploy.training.trainer import train
        from pathlib import Path
        r = train(tiny_config(Path({str(tmp_path)!r}), {str(cifar_dir)!r}, strategy="mirrored"))
        print(json.dumps({{"replicas": r.info["replicas"], "acc": r.test_accuracy}}))
    """)
    proc = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["replicas"] == 2 and 0.0 <= out["acc"] <= 1.0


@pytest.mark.real_data
@pytest.mark.slow
def test_cnn_beats_chance_clearly_on_real_cifar10(tmp_path, real_data_dir):
    recipe = resolve_recipe("cnn", quick=True, epochs=3, warmup_epochs=1)
    config = TrainConfig(
        model="cnn",
        recipe=recipe,
        data_dir=real_data_dir,
        runs_dir=tmp_path / "runs",
        max_train_samples=2000,
        verbose=0,
    )
    result = train(config)
    assert result.info["data"]["test_images"] == 10_000
    assert result.test_accuracy >= 0.25  # chance is 0.10


def test_a_freezing_phase_on_a_model_without_backbone_is_refused(tmp_path, cifar_dir):
    recipe = resolve_recipe("cnn", epochs=1)
    frozen = dataclasses.replace(recipe.phases[0], trainable="head")
    config = tiny_config(tmp_path, cifar_dir)
    config.recipe = dataclasses.replace(config.recipe, phases=(frozen,))
    with pytest.raises(InvalidOptionError, match="cnn has no backbone to freeze"):
        train(config)


@pytest.mark.slow  # the fast loop (-m 'not slow') leaves it to CI
def test_mobilenetv2_phases_freeze_fine_tune_then_unfreeze_everything(tmp_path, cifar_dir):
    # A tiny MobileNetV2 through three phases, one epoch each: the head (frozen backbone), the
    # fine-tune (last half of the backbone), then "all" (a head -> all recipe must unfreeze it).
    keras = _tf.keras()
    seen = []

    class CountTrainable(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            seen.append(len(self.model.trainable_weights))

    base = resolve_recipe("mobilenetv2", batch_size=32)
    head, finetune = (dataclasses.replace(p, epochs=1) for p in base.phases)
    everything = dataclasses.replace(finetune, name="all", trainable="all")
    config = TrainConfig(
        model="mobilenetv2",
        recipe=dataclasses.replace(base, phases=(head, finetune, everything)),
        data_dir=cifar_dir,
        runs_dir=tmp_path / "runs",
        weights="none",
        verbose=0,
        max_train_samples=40,
        model_kwargs={"input_size": 32, "alpha": 0.35},
        callbacks=[CountTrainable()],
    )
    result = train(config)
    rows = list(csv.DictReader(open(result.history_path)))
    assert [r["phase"] for r in rows] == ["head", "finetune", "all"]
    every = len(
        create_model("mobilenetv2", weights=None, input_size=32, alpha=0.35).trainable_weights
    )
    assert seen[0] == 2  # the head's kernel and bias
    assert 2 < seen[1] < every  # part of the backbone
    assert seen[2] == every


def test_weight_decay_for_a_builder_without_one_is_refused(tmp_path, cifar_dir):
    recipe = resolve_recipe("mobilenetv2", epochs=1, weight_decay=1e-4)
    config = TrainConfig(model="mobilenetv2", recipe=recipe, data_dir=cifar_dir, weights="none")
    with pytest.raises(InvalidOptionError, match="mobilenetv2 takes no weight decay"):
        train(config)


def test_airbench_trains_with_whitening_fitted_to_its_own_training_split(tmp_path, cifar_dir):
    """The frozen whitening layer is set from the training split before the first step and
    stays as set; run.json names the architecture and the recipe, as the report quotes them."""
    from cifar_deploy.training.airbench import whitening_filters

    recipe = resolve_recipe("airbench", epochs=1, warmup_epochs=0, batch_size=32)
    config = TrainConfig(
        model="airbench",
        recipe=recipe,
        data_dir=cifar_dir,
        runs_dir=tmp_path / "runs",
        model_kwargs={"widths": (8, 8, 8)},
        verbose=0,
    )
    train(config)
    run = tmp_path / "runs" / "airbench"
    best = _tf.keras().models.load_model(run / "best.keras")
    data = load_cifar10(cifar_dir)
    (x_tr, _), _ = train_val_split(data.x_train, data.y_train, recipe.val_split, config.seed)
    np.testing.assert_allclose(
        best.get_layer("airbench_whiten").get_weights()[0], whitening_filters(x_tr), rtol=1e-4
    )
    info = json.loads((run / "run.json").read_text())
    assert info["architecture"].startswith("airbench94-style net")
    assert "label smoothing 0.2" in info["recipe_summary"]
