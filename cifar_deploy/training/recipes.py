"""Training recipes: hyperparameters, learning-rate schedules, augmentation and the input pipeline.

A :class:`Recipe` is data: one or more :class:`Phase` entries (MobileNetV2 trains a frozen-backbone
head phase, then a fine-tune phase) plus the settings every phase shares. Defaults for each model
live next to its builder; every value can be overridden with :meth:`Recipe.with_overrides`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from .. import _tf
from ..errors import InvalidOptionError

OPTIMIZERS = ("sgd", "adam")
TRAINABLE = ("all", "head", "finetune")
MIXED_PRECISION = ("off", "auto", "bf16", "fp16")


@dataclass(frozen=True)
class Phase:
    """One stretch of training with one optimizer and one learning-rate schedule."""

    name: str
    epochs: int  # epochs in this phase
    optimizer: str = "sgd"  # one of OPTIMIZERS
    lr: float = 0.1  # peak learning rate (after warmup)
    warmup_epochs: float = 0.0  # epochs of linear warmup from 0 to `lr`
    final_lr: float = 0.0  # learning rate the cosine decay ends at
    cosine: bool = True  # cosine decay after warmup; False keeps `lr` constant
    momentum: float = 0.9  # SGD momentum
    nesterov: bool = True  # Nesterov momentum for SGD
    trainable: str = "all"  # "all", "head" (frozen backbone) or "finetune" (top of backbone)


@dataclass(frozen=True)
class Recipe:
    """Everything that defines a training run besides the data and the seed."""

    phases: tuple[Phase, ...]
    batch_size: int = 128  # images per optimizer step
    label_smoothing: float = 0.0  # mass moved from the true class to all classes uniformly
    crop_padding: int = 4  # pixels of zero padding before a random 32x32 crop; 0 disables
    flip: bool = True  # random horizontal flips
    mixup_alpha: float = 0.0  # Beta(alpha, alpha) MixUp; 0 disables
    weight_decay: float = 0.0  # L2 coefficient on kernels (gradient adds weight_decay * w)
    early_stopping_patience: int | None = None  # epochs without val-accuracy gain before stopping
    finetune_fraction: float = 0.5  # share of backbone layers unfrozen in "finetune" phases
    val_split: float = 0.1  # share of the training images held out for validation
    mixed_precision: str = "off"  # "off", "auto" (bf16 on AMX CPUs, fp16 on GPUs), "bf16", "fp16"

    @property
    def epochs(self) -> int:
        return sum(p.epochs for p in self.phases)

    def with_overrides(self, **overrides) -> Recipe:
        """A copy with overrides; ``epochs``, ``lr``, ``warmup_epochs`` and ``final_lr`` apply to
        the main (last) phase, anything else to the recipe. ``None`` values are ignored. Fewer
        epochs than the warmup needs shrink the warmup to a quarter of the epochs."""
        overrides = {k: v for k, v in overrides.items() if v is not None}
        phase_keys = {"epochs", "lr", "warmup_epochs", "final_lr", "optimizer", "momentum"}
        phase_over = {k: overrides.pop(k) for k in list(overrides) if k in phase_keys}
        phases = self.phases
        if "epochs" in phase_over and "warmup_epochs" not in phase_over:
            # A shorter run keeps the recipe's warmup, but never more than a quarter of it.
            phase_over["warmup_epochs"] = min(phases[-1].warmup_epochs, phase_over["epochs"] / 4)
        if phase_over:
            phases = phases[:-1] + (dataclasses.replace(phases[-1], **phase_over),)
        recipe = dataclasses.replace(self, phases=phases, **overrides)
        recipe.validate()
        return recipe

    def validate(self) -> None:
        def bad(what, value, expected):
            raise InvalidOptionError(f"{what} must be {expected}, received {value!r}")

        numbers = {
            "label smoothing": self.label_smoothing,
            "MixUp alpha": self.mixup_alpha,
            "weight decay": self.weight_decay,
            "validation split": self.val_split,
        }
        for p in self.phases:
            numbers.update({f"learning rate of phase {p.name!r}": p.lr})
            numbers.update({f"final learning rate of phase {p.name!r}": p.final_lr})
            numbers.update({f"warmup epochs of phase {p.name!r}": p.warmup_epochs})
        for what, value in numbers.items():  # NaN passes every comparison below unnoticed
            if value is not None and not math.isfinite(value):
                bad(what, value, "a finite number")
        if self.weight_decay < 0:
            bad("weight decay", self.weight_decay, ">= 0")
        if self.batch_size < 1:
            bad("batch size", self.batch_size, "at least 1")
        if not 0.0 <= self.label_smoothing < 1.0:
            bad("label smoothing", self.label_smoothing, "in [0, 1)")
        if self.mixup_alpha < 0:
            bad("MixUp alpha", self.mixup_alpha, ">= 0")
        if self.crop_padding < 0:
            bad("crop padding", self.crop_padding, ">= 0 pixels")
        if not 0.0 < self.val_split < 1.0:
            bad("validation split", self.val_split, "between 0 and 1 (exclusive)")
        if not 0.0 < self.finetune_fraction <= 1.0:
            bad("fine-tune fraction", self.finetune_fraction, "in (0, 1]")
        if self.mixed_precision not in MIXED_PRECISION:
            bad("mixed precision", self.mixed_precision, f"one of {', '.join(MIXED_PRECISION)}")
        for p in self.phases:
            if p.epochs < 0:
                bad(f"epochs of phase {p.name!r}", p.epochs, ">= 0")
            if p.lr <= 0:
                bad(f"learning rate of phase {p.name!r}", p.lr, "> 0")
            if p.optimizer not in OPTIMIZERS:
                bad("optimizer", p.optimizer, f"one of {', '.join(OPTIMIZERS)}")
            if p.trainable not in TRAINABLE:
                bad("trainable", p.trainable, f"one of {', '.join(TRAINABLE)}")
            if not 0 <= p.warmup_epochs <= max(p.epochs, 0):
                bad(f"warmup epochs of phase {p.name!r}", p.warmup_epochs, f"in 0..{p.epochs}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ----------------------------------------------------------------------------------------------
# Schedules and optimizers


def make_schedule(phase: Phase, steps_per_epoch: int):
    """Linear warmup from 0 to ``phase.lr`` over ``warmup_epochs``, then cosine decay to
    ``final_lr`` over the remaining epochs (``keras.optimizers.schedules.CosineDecay``)."""
    keras = _tf.keras()
    warmup_steps = int(round(phase.warmup_epochs * steps_per_epoch))
    total_steps = max(1, phase.epochs * steps_per_epoch)
    if not phase.cosine and warmup_steps == 0:
        return phase.lr
    decay_steps = max(1, total_steps - warmup_steps)
    alpha = phase.final_lr / phase.lr if phase.cosine else 1.0  # floor as a fraction of the peak
    if warmup_steps == 0:
        return keras.optimizers.schedules.CosineDecay(phase.lr, decay_steps, alpha=alpha)
    return keras.optimizers.schedules.CosineDecay(
        0.0, decay_steps, alpha=alpha, warmup_target=phase.lr, warmup_steps=warmup_steps
    )


def make_optimizer(phase: Phase, steps_per_epoch: int):
    keras = _tf.keras()
    lr = make_schedule(phase, steps_per_epoch)
    if phase.optimizer == "adam":
        return keras.optimizers.Adam(learning_rate=lr)
    return keras.optimizers.SGD(learning_rate=lr, momentum=phase.momentum, nesterov=phase.nesterov)


def make_loss(recipe: Recipe):
    """Categorical cross-entropy on one-hot (or MixUp-blended) labels, with label smoothing."""
    keras = _tf.keras()
    return keras.losses.CategoricalCrossentropy(label_smoothing=recipe.label_smoothing)


# ----------------------------------------------------------------------------------------------
# Augmentation and the tf.data pipeline


def random_crop_flip(images, crop_padding: int, flip: bool):
    """Per-image random crop after zero padding, and per-image horizontal flips, on a batch.

    ``keras.layers.RandomCrop`` draws one offset per batch, and the recipe wants one per image, so
    the crop is two batched gathers (exact pixels, no interpolation); flips use
    ``keras.layers.RandomFlip``'s rule (each image independently, p = 0.5).
    """
    tf = _tf.tf()
    batch = tf.shape(images)[0]
    height, width = images.shape[1], images.shape[2]
    if crop_padding:
        p = crop_padding
        padded = tf.pad(images, [[0, 0], [p, p], [p, p], [0, 0]])
        oy = tf.random.uniform([batch], 0, 2 * p + 1, dtype=tf.int32)
        ox = tf.random.uniform([batch], 0, 2 * p + 1, dtype=tf.int32)
        rows = oy[:, None] + tf.range(height)[None, :]
        cols = ox[:, None] + tf.range(width)[None, :]
        images = tf.gather(padded, rows, axis=1, batch_dims=1)
        images = tf.gather(images, cols, axis=2, batch_dims=1)
    if flip:
        mask = tf.random.uniform([batch, 1, 1, 1]) < 0.5
        images = tf.where(mask, tf.reverse(images, axis=[2]), images)
    return images


def train_dataset(x: np.ndarray, y: np.ndarray, recipe: Recipe, seed: int, num_classes: int = 10):
    """Shuffled, augmented, batched (images float32 0..255, one-hot labels) training batches."""
    tf = _tf.tf()
    keras = _tf.keras()
    ds = tf.data.Dataset.from_tensor_slices((x, y))
    ds = ds.shuffle(len(y), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(recipe.batch_size, drop_remainder=len(y) >= recipe.batch_size)

    def augment(images, labels):
        images = random_crop_flip(tf.cast(images, tf.float32), recipe.crop_padding, recipe.flip)
        return images, tf.one_hot(labels, num_classes)

    ds = ds.map(augment, num_parallel_calls=tf.data.AUTOTUNE)
    if recipe.mixup_alpha > 0:
        mixup = keras.layers.MixUp(alpha=recipe.mixup_alpha, seed=seed)

        def mix(images, labels):
            out = mixup({"images": images, "labels": labels})
            return out["images"], out["labels"]

        ds = ds.map(mix, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


def eval_dataset(x: np.ndarray, y: np.ndarray, batch_size: int, num_classes: int = 10):
    """Batches of un-augmented images (float32 0..255) with one-hot labels."""
    tf = _tf.tf()
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(batch_size)
    ds = ds.map(lambda a, b: (tf.cast(a, tf.float32), tf.one_hot(b, num_classes)))
    return ds.prefetch(tf.data.AUTOTUNE)
