"""Specification of the model registry and the three model families."""

from __future__ import annotations

import numpy as np
import pytest

from cifar_deploy import _tf
from cifar_deploy.errors import InvalidOptionError, UnknownNameError, WeightsUnavailableError
from cifar_deploy.training import create_model, get_model_spec, list_models
from cifar_deploy.training.layers import CIFAR_MEAN, CIFAR_STD
from cifar_deploy.training.mobilenetv2 import BACKBONE_NAME, build_mobilenetv2, set_trainable
from cifar_deploy.training.wide_resnet import blocks_per_group

# Small builder arguments so every family runs in a second on 2 cores.
TINY = {
    "cnn": {"blocks": ((8, 1), (16, 1), (16, 1)), "head_units": 16},
    "mobilenetv2": {"weights": "none", "input_size": 32, "alpha": 0.35},
    "wrn-28-10": {"depth": 10, "width": 1},
    "airbench": {"widths": (8, 8, 8)},
}


def test_registry_lists_the_seed_models_and_the_fast_quick_model():
    assert list_models() == ["airbench", "cnn", "mobilenetv2", "wrn-28-10"]


def test_unknown_model_names_the_valid_ones_and_the_closest():
    with pytest.raises(
        UnknownNameError, match="unknown model 'cnnn'; expected one of: airbench, cnn"
    ) as e:
        get_model_spec("cnnn")
    assert e.value.hint == "did you mean 'cnn'?"


def test_wide_resnet_names_resolve_by_pattern_and_validate_depth():
    assert get_model_spec("wrn-16-4").builder_kwargs == (("depth", 16), ("width", 4))
    with pytest.raises(InvalidOptionError, match="6n \\+ 4.*received 27"):
        get_model_spec("wrn-27-10")
    assert blocks_per_group(28) == 4


@pytest.mark.parametrize(
    "name, low, high",
    [
        ("cnn", 1.5e6, 2.5e6),
        ("airbench", 1.9e6, 2.1e6),
        pytest.param("wrn-28-10", 36.3e6, 36.7e6, marks=pytest.mark.slow),  # builds 36.5M weights
    ],
)
def test_parameter_counts_match_the_reference_models(name, low, high):
    assert low <= create_model(name).count_params() <= high


@pytest.mark.parametrize("name", list(TINY))
def test_forward_pass_on_raw_pixels_gives_probabilities(name):
    model = create_model(name, **TINY[name])
    assert model.input_shape == (None, 32, 32, 3) and model.inputs[0].name == "images"
    x = np.random.default_rng(0).integers(0, 256, size=(3, 32, 32, 3)).astype("float32")
    p = np.asarray(model(x, training=False))
    assert p.shape == (3, 10) and p.dtype == np.float32
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-5)
    assert (p >= 0).all()


@pytest.mark.parametrize("name", list(TINY))
def test_every_layer_is_named_after_its_model(name):
    model = create_model(name, **TINY[name])
    prefix = model.name
    named = [layer.name for layer in model.layers[1:]]
    assert all(n.startswith(prefix) for n in named), named


def test_standardization_lives_in_the_graph():
    keras = _tf.keras()
    model = create_model("cnn", **TINY["cnn"])
    standardize = keras.Model(model.input, model.get_layer("cnn_standardize").output)
    mean_image = np.broadcast_to(np.array(CIFAR_MEAN, np.float32), (1, 32, 32, 3))
    np.testing.assert_allclose(np.asarray(standardize(mean_image)), 0.0, atol=1e-4)
    one_std_up = mean_image + np.array(CIFAR_STD, np.float32)
    np.testing.assert_allclose(np.asarray(standardize(one_std_up)), 1.0, atol=1e-4)


def test_mobilenetv2_scales_to_minus_one_one_inside_the_model():
    keras = _tf.keras()
    model = build_mobilenetv2(**TINY["mobilenetv2"])
    scaled = keras.Model(model.input, model.get_layer("mobilenetv2_scale").output)
    out = np.asarray(scaled(np.stack([np.zeros((32, 32, 3)), np.full((32, 32, 3), 255.0)])))
    np.testing.assert_allclose(out[0], -1.0, atol=1e-6)
    np.testing.assert_allclose(out[1], 1.0, atol=1e-6)


def test_mobilenetv2_default_resizes_to_224():
    model = build_mobilenetv2(weights="none", alpha=0.35)
    assert model.get_layer("mobilenetv2_resize").output.shape[1:3] == (224, 224)


def test_mobilenetv2_loads_a_local_weights_file(tmp_path):
    source = build_mobilenetv2(**TINY["mobilenetv2"])
    path = tmp_path / "backbone.weights.h5"
    source.get_layer(BACKBONE_NAME).save_weights(path)
    loaded = build_mobilenetv2(**{**TINY["mobilenetv2"], "weights": str(path)})
    for a, b in zip(
        source.get_layer(BACKBONE_NAME).get_weights(), loaded.get_layer(BACKBONE_NAME).get_weights()
    ):
        np.testing.assert_array_equal(a, b)


def test_mobilenetv2_imagenet_offline_fails_clearly(offline):
    with pytest.raises(WeightsUnavailableError, match="could not download") as e:
        build_mobilenetv2(weights="imagenet", input_size=96, alpha=0.35)
    assert "--weights none" in e.value.hint


def test_mobilenetv2_rejects_a_weights_value_that_is_no_file():
    with pytest.raises(InvalidOptionError, match="neither a file nor a known value"):
        build_mobilenetv2(weights="/nonexistent/w.h5")


def test_finetune_unfreezes_the_last_half_but_never_batch_norm():
    keras = _tf.keras()
    model = build_mobilenetv2(**TINY["mobilenetv2"])
    backbone = model.get_layer(BACKBONE_NAME)
    set_trainable(model, "head")
    assert not any(w.trainable for w in backbone.weights)
    set_trainable(model, "finetune", 0.5)
    layers = backbone.layers
    half = len(layers) // 2
    assert not any(layer.trainable for layer in layers[: half - 1])
    late = [layer for layer in layers[half + 1 :] if layer.weights]
    bn = [layer for layer in late if isinstance(layer, keras.layers.BatchNormalization)]
    conv = [layer for layer in late if not isinstance(layer, keras.layers.BatchNormalization)]
    assert bn and not any(layer.trainable for layer in bn)
    assert conv and all(layer.trainable for layer in conv)


def test_flop_count_of_a_known_model():
    from cifar_deploy.training import create_model
    from cifar_deploy.training.flops import model_flops
    from tests.helpers import TINY_CNN

    model = create_model("cnn", **TINY_CNN)  # convs 3->8 @32x32, 8->16 @16x16, 16->16 @8x8
    expected = (
        2 * 32 * 32 * 8 * 27
        + 2 * 16 * 16 * 16 * 72
        + 2 * 8 * 8 * 16 * 144
        + 2 * 16 * 16
        + 2 * 16 * 10
    )
    assert model_flops(model) == expected == 1_327_936


def test_flop_count_of_the_full_cnn_is_about_0_38_gflops():
    from cifar_deploy.training import create_model
    from cifar_deploy.training.flops import model_flops

    assert 0.37e9 < model_flops(create_model("cnn")) < 0.39e9  # 381M by hand


def test_all_after_finetune_makes_every_backbone_layer_trainable():
    model = build_mobilenetv2(weights=None, input_size=32, alpha=0.35)
    set_trainable(model, "finetune", 0.5)
    set_trainable(model, "all")
    assert len(model.trainable_weights) == len(model.weights) - count_moving_statistics(model)
    set_trainable(model, "head")
    assert len(model.trainable_weights) == 2  # the classifier's kernel and bias


def count_moving_statistics(model) -> int:
    """Batch-norm moving means and variances: weights that are never trainable."""
    keras = _tf.keras()
    layers = model.get_layer(BACKBONE_NAME).layers
    return 2 * sum(isinstance(layer, keras.layers.BatchNormalization) for layer in layers)


def test_whitening_filters_decorrelate_patches_to_unit_variance():
    """2x2 patches of correlated images come out of the whitening kernel with an identity
    covariance (up to the eigenvalue epsilon), each filter once with each sign."""
    from cifar_deploy.training.airbench import WHITEN_EPSILON, whitening_filters

    rng = np.random.default_rng(0)
    base = rng.normal(128, 40, size=(400, 16, 16, 1))
    images = np.clip(base + rng.normal(0, 20, size=(400, 16, 16, 3)), 0, 255)
    kernel = whitening_filters(images)
    assert kernel.shape == (2, 2, 3, 24)
    np.testing.assert_allclose(kernel[..., 12:], -kernel[..., :12])
    x = (images - np.array(CIFAR_MEAN)) / np.array(CIFAR_STD)
    patches = np.stack(
        [x[:, i : 15 + i, j : 15 + j, :] for i in range(2) for j in range(2)], axis=3
    ).reshape(-1, 12)
    out = (patches - patches.mean(0)) @ kernel[..., :12].reshape(12, 12)
    covariance = np.cov(out.T)
    eigenvalues = np.linalg.eigvalsh(np.cov(patches.T))
    np.testing.assert_allclose(
        np.sort(np.diag(covariance)),
        np.sort(eigenvalues / (eigenvalues + WHITEN_EPSILON)),
        rtol=0.02,
    )
    assert np.abs(covariance - np.diag(np.diag(covariance))).max() < 0.02


def test_airbench_whitening_is_frozen_and_set_from_the_training_images():
    spec = get_model_spec("airbench")
    model = spec.build(**TINY["airbench"])
    whiten = model.get_layer("airbench_whiten")
    assert not whiten.trainable and spec.fit_to_data is not None
    images = np.random.default_rng(1).integers(0, 256, size=(64, 32, 32, 3)).astype(np.uint8)
    spec.fit_to_data(model, images)
    from cifar_deploy.training.airbench import whitening_filters

    np.testing.assert_allclose(whiten.get_weights()[0], whitening_filters(images), rtol=1e-5)
