"""Specification of recipes: defaults, overrides, schedules, label smoothing, augmentation."""

from __future__ import annotations

import numpy as np
import pytest

from cifar_deploy import _tf
from cifar_deploy.errors import InvalidOptionError
from cifar_deploy.training import get_model_spec, resolve_recipe
from cifar_deploy.training.recipes import (
    Phase,
    Recipe,
    make_loss,
    make_schedule,
    random_crop_flip,
    train_dataset,
)


def test_default_recipes_match_the_reference_results():
    cnn = get_model_spec("cnn").recipe
    (p,) = cnn.phases
    assert (p.optimizer, p.nesterov, p.momentum, p.epochs, p.warmup_epochs) == (
        "sgd",
        True,
        0.9,
        200,
        5,
    )
    assert (cnn.label_smoothing, cnn.crop_padding, cnn.flip, cnn.batch_size) == (0.1, 4, True, 128)
    mnv2 = get_model_spec("mobilenetv2").recipe
    head, fine = mnv2.phases
    assert (head.epochs, head.optimizer, head.trainable) == (5, "adam", "head")
    assert (fine.epochs, fine.optimizer, fine.trainable) == (50, "sgd", "finetune")
    assert (mnv2.finetune_fraction, mnv2.early_stopping_patience) == (0.5, 6)
    wrn = get_model_spec("wrn-28-10").recipe
    (w,) = wrn.phases
    assert (wrn.mixup_alpha, wrn.weight_decay, w.lr, w.final_lr, w.epochs) == (
        0.2,
        5e-4,
        0.1,
        1e-3,
        300,
    )
    assert wrn.early_stopping_patience


def test_overrides_apply_to_the_main_phase_and_none_keeps_defaults():
    r = resolve_recipe("mobilenetv2", epochs=3, lr=0.5, batch_size=None, label_smoothing=0.2)
    assert r.phases[0].epochs == 5 and r.phases[1].epochs == 3 and r.phases[1].lr == 0.5
    assert r.batch_size == 64 and r.label_smoothing == 0.2


def test_a_short_run_shrinks_the_warmup_to_a_quarter_of_its_epochs():
    assert resolve_recipe("cnn", epochs=2).phases[0].warmup_epochs == 0.5
    assert resolve_recipe("cnn", epochs=100).phases[0].warmup_epochs == 5
    assert resolve_recipe("cnn", epochs=2, warmup_epochs=1).phases[0].warmup_epochs == 1


def test_quick_preset_exists_only_for_the_cnn():
    assert resolve_recipe("cnn", quick=True).epochs < 30
    with pytest.raises(
        InvalidOptionError,
        match="--quick is a preset for airbench, cnn; received model 'wrn-28-10'",
    ):
        resolve_recipe("wrn-28-10", quick=True)


@pytest.mark.parametrize(
    "override, message",
    [
        ({"batch_size": 0}, "batch size must be at least 1, received 0"),
        ({"label_smoothing": 1.5}, r"label smoothing must be in \[0, 1\)"),
        ({"val_split": 1.0}, "validation split"),
        ({"lr": -1.0}, "learning rate"),
        ({"warmup_epochs": 500}, "warmup epochs"),
    ],
)
def test_bad_recipe_values_are_refused_with_what_was_received(override, message):
    with pytest.raises(InvalidOptionError, match=message):
        get_model_spec("cnn").recipe.with_overrides(**override)


def test_warmup_then_cosine_schedule_values():
    phase = Phase("train", epochs=10, lr=0.1, warmup_epochs=2, final_lr=0.001)
    schedule = make_schedule(phase, steps_per_epoch=100)  # 200 warmup steps, 800 decay steps
    lr = lambda step: float(schedule(step))  # noqa: E731
    assert lr(0) == pytest.approx(0.0, abs=1e-9)
    assert lr(100) == pytest.approx(0.05, rel=1e-4)  # halfway up the linear warmup
    assert lr(200) == pytest.approx(0.1, rel=1e-4)  # peak
    assert lr(600) == pytest.approx(0.001 + (0.1 - 0.001) / 2, rel=1e-3)  # cosine midpoint
    assert lr(1000) == pytest.approx(0.001, rel=1e-3)  # floor


def test_constant_schedule_is_a_plain_float():
    assert make_schedule(Phase("head", epochs=5, lr=1e-3, cosine=False), 10) == 1e-3


def test_label_smoothing_moves_mass_to_all_classes():
    recipe = Recipe(phases=(Phase("t", 1),), label_smoothing=0.1)
    y = np.eye(10, dtype="float32")[[3]]
    p = np.full((1, 10), 0.02, dtype="float32")
    p[0, 3] = 0.82
    smoothed = y * 0.9 + 0.1 / 10  # 0.91 on the true class, 0.01 elsewhere
    expected = -(smoothed * np.log(p)).sum()
    assert float(make_loss(recipe)(y, p)) == pytest.approx(expected, rel=1e-5)
    plain = Recipe(phases=(Phase("t", 1),), label_smoothing=0.0)
    assert float(make_loss(plain)(y, p)) == pytest.approx(-np.log(0.82), rel=1e-5)


def _ramp_images(n):
    # Every pixel distinct within an image, so a crop or flip can be recognised.
    base = np.arange(32 * 32, dtype=np.float32).reshape(1, 32, 32, 1)
    return np.repeat(np.repeat(base, n, axis=0), 3, axis=3) + np.arange(n).reshape(n, 1, 1, 1)


def test_random_crop_is_a_per_image_shift_of_the_zero_padded_image():
    tf = _tf.tf()
    tf.random.set_seed(0)
    x = _ramp_images(16)
    out = np.asarray(random_crop_flip(tf.constant(x), crop_padding=4, flip=False))
    padded = np.pad(x, ((0, 0), (4, 4), (4, 4), (0, 0)))
    offsets = set()
    for i in range(16):
        matches = [
            (oy, ox)
            for oy in range(9)
            for ox in range(9)
            if np.array_equal(padded[i, oy : oy + 32, ox : ox + 32], out[i])
        ]
        assert len(matches) == 1
        offsets.add(matches[0])
    assert len(offsets) > 1  # offsets differ between images of one batch


def test_flip_mirrors_about_half_the_images_and_leaves_the_rest():
    tf = _tf.tf()
    tf.random.set_seed(1)
    x = _ramp_images(64)
    out = np.asarray(random_crop_flip(tf.constant(x), crop_padding=0, flip=True))
    same = [np.array_equal(out[i], x[i]) for i in range(64)]
    mirrored = [np.array_equal(out[i], x[i, :, ::-1]) for i in range(64)]
    assert all(s != m for s, m in zip(same, mirrored))
    assert 16 <= sum(mirrored) <= 48


def test_mixup_blends_images_and_labels_with_the_same_weight():
    # Class c's image is the constant 20*c, so a blended pixel equals 20 * E[class] under the
    # blended label: the images and the labels must have been mixed with the same weights.
    labels = np.arange(64) % 10
    images = np.broadcast_to((labels * 20).astype(np.uint8)[:, None, None, None], (64, 32, 32, 3))
    recipe = Recipe(
        phases=(Phase("t", 1),), batch_size=64, crop_padding=0, flip=False, mixup_alpha=0.2
    )
    x, y = next(iter(train_dataset(np.ascontiguousarray(images), labels, recipe, seed=3)))
    x, y = np.asarray(x), np.asarray(y)
    np.testing.assert_allclose(y.sum(axis=1), 1.0, atol=1e-5)
    assert (y.max(axis=1) < 0.999).any()  # some rows really are blends
    expected = 20 * (y * np.arange(10)).sum(axis=1)
    np.testing.assert_allclose(x[:, 0, 0, 0], expected, atol=1e-2)
    np.testing.assert_allclose(x.std(axis=(1, 2, 3)), 0.0, atol=1e-3)


def test_without_mixup_labels_are_one_hot():
    labels = np.arange(40) % 10
    images = np.zeros((40, 32, 32, 3), np.uint8)
    recipe = Recipe(phases=(Phase("t", 1),), batch_size=20)
    _, y = next(iter(train_dataset(images, labels, recipe, seed=0)))
    assert set(np.unique(np.asarray(y))) == {0.0, 1.0}
