"""Specification of mirror test-time augmentation: one definition in verify, export, training."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cifar_deploy import _tf
from cifar_deploy.checks.verify import verify
from cifar_deploy.errors import InvalidOptionError
from cifar_deploy.export import ExportOptions, export_model, read_sidecar
from cifar_deploy.runtime import load_predictor
from cifar_deploy.tta import mirrored, with_tta
from tests.helpers import CALIBRATION

IMAGES = np.random.default_rng(9).integers(0, 256, size=(6, 32, 32, 3), dtype=np.uint8)


def test_flip_tta_is_the_mean_of_the_image_and_its_mirror():
    seen = []

    def predict(images):
        seen.append(images.copy())
        return images[:, 0, :2, 0].astype(np.float64)  # the first two pixels of row 0

    out = with_tta(predict, "flip")(IMAGES)
    np.testing.assert_array_equal(seen[1], IMAGES[:, :, ::-1, :])
    pixels = IMAGES.astype(np.float64)
    expected = (pixels[:, 0, :2, 0] + pixels[:, 0, ::-1, 0][:, :2]) / 2.0
    np.testing.assert_allclose(out, expected)
    assert with_tta(predict, "none") is predict
    with pytest.raises(InvalidOptionError, match="--tta must be one of: none, flip"):
        with_tta(predict, "rotate")


@pytest.mark.parametrize("fmt", ["onnx", "tflite"])
def test_an_exported_tta_graph_averages_the_mirror(tiny_model, tmp_path, fmt):
    options = ExportOptions(quantization="none", tta="flip", calibration_images=CALIBRATION)
    (art,) = export_model(tiny_model, fmt, options, tmp_path)
    assert art.path.name == f"cnn_float32_tta.{fmt}" and read_sidecar(art.path).tta == "flip"
    model = _tf.keras().models.load_model(tiny_model)

    def keras(images):
        return np.asarray(model(images.astype(np.float32), training=False))

    expected = (keras(IMAGES) + keras(mirrored(IMAGES))) / 2.0
    np.testing.assert_allclose(load_predictor(art.path).predict(IMAGES), expected, atol=1e-5)


def test_verify_compares_a_tta_artifact_with_the_reference_under_tta(
    tiny_model, tiny_exports, tmp_path, cifar_dir
):
    (art,) = export_model(
        tiny_model, "onnx", ExportOptions(quantization="none", tta="flip"), tmp_path
    )
    plain = tiny_exports[("onnx", "none")].path
    rows = verify([art.path, plain], data_dir=cifar_dir, tta="flip")
    ref, tta_row, plain_row = rows
    assert [r.status for r in rows] == ["reference", "pass", "pass"], [r.reasons for r in rows]
    assert tta_row.tta == "flip" and tta_row.max_abs_diff <= 1e-5  # against the reference's TTA
    assert tta_row.accuracy == pytest.approx(ref.accuracy_tta)
    assert plain_row.accuracy_tta == pytest.approx(ref.accuracy_tta)  # TTA at run time
    assert tta_row.accuracy_tta is None  # already in its graph


def test_training_reports_accuracy_with_and_without_tta(tmp_path, cifar_dir):
    from cifar_deploy.training import resolve_recipe
    from cifar_deploy.training.trainer import TrainConfig, train
    from tests.helpers import TINY_CNN

    recipe = resolve_recipe("cnn", epochs=1, warmup_epochs=0, batch_size=32, mixed_precision="off")
    config = TrainConfig(
        model="cnn",
        recipe=recipe,
        data_dir=cifar_dir,
        runs_dir=tmp_path,
        model_kwargs=TINY_CNN,
        verbose=0,
    )
    result = train(config)
    info = json.loads(result.run_json_path.read_text())
    assert 0.0 <= info["test_accuracy_flip_tta"] <= 1.0
    assert info["test_accuracy"] == result.test_accuracy
