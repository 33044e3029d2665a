"""Specification of `cifar-deploy serve DIR`: a model repository, every artifact its own model
with its own batcher, bad artifacts reported and skipped, Triton's repository index and model
configuration, per-model metrics (driven by tritonclient on a loopback port)."""

from __future__ import annotations

import numpy as np
import pytest
import requests
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from cifar_deploy.serving.server import build_server_app, load_repository
from tests.helpers import copy_artifacts, serving


@pytest.fixture(scope="module")
def repository(tiny_exports, tmp_path_factory):
    root = tmp_path_factory.mktemp("repo") / "exports"
    copy_artifacts([tiny_exports[("onnx", "none")], tiny_exports[("tflite", "none")]], root / "cnn")
    damaged = copy_artifacts([tiny_exports[("tflite", "int8")]], root / "other")
    (damaged / "cnn_int8.tflite").write_bytes(b"not a flatbuffer")  # its sidecar hash disagrees
    return root


@pytest.fixture(scope="module")
def served(repository):
    return load_repository(repository)


@pytest.fixture(scope="module")
def server(served):
    predictors, skipped = served
    with serving(build_server_app(predictors, max_queue_delay_ms=5, skipped=skipped)) as address:
        yield address


@pytest.fixture
def client(server):
    return httpclient.InferenceServerClient(url=server)


def test_every_artifact_is_its_own_model_and_a_bad_one_is_skipped_with_its_reason(served):
    predictors, skipped = served
    assert sorted(predictors) == ["cnn_float32.onnx", "cnn_float32.tflite"]
    assert list(skipped) == ["cnn_int8.tflite"]
    assert "does not match its sidecar" in skipped["cnn_int8.tflite"]


def test_the_repository_index_lists_ready_and_unavailable_models(client):
    index = {m["name"]: m for m in client.get_model_repository_index()}
    assert index["cnn_float32.onnx"]["state"] == index["cnn_float32.tflite"]["state"] == "READY"
    assert index["cnn_int8.tflite"]["state"] == "UNAVAILABLE"
    assert "does not match its sidecar" in index["cnn_int8.tflite"]["reason"]


def test_each_model_answers_with_its_own_predictions(client, served):
    predictors, _ = served
    batch = np.random.default_rng(3).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    for name, predictor in predictors.items():
        tensor = httpclient.InferInput("images", list(batch.shape), "UINT8")
        tensor.set_data_from_numpy(batch)
        out = client.infer(name, [tensor], model_version="1").as_numpy("probabilities")
        np.testing.assert_allclose(out, predictor.predict(batch), atol=1e-6)
        assert client.is_model_ready(name)
        assert client.get_model_config(name)["name"] == name


def test_an_unknown_model_or_version_is_404_naming_what_is_served(client, server):
    with pytest.raises(InferenceServerException, match="has version '1', not '2'"):
        client.get_model_metadata("cnn_float32.onnx", model_version="2")
    reply = requests.get(f"http://{server}/v2/models/cnn_int8.tflite", timeout=10)
    assert reply.status_code == 404 and "'cnn_float32.onnx'" in reply.json()["error"]


def test_classify_asks_which_model_when_several_are_served(server):
    reply = requests.post(f"http://{server}/v1/classify", data=b"x", timeout=10)
    assert reply.status_code == 400 and "pass ?model=" in reply.json()["error"]


def test_metrics_are_labelled_by_model(client, server):
    batch = np.zeros((1, 32, 32, 3), np.uint8)
    tensor = httpclient.InferInput("images", [1, 32, 32, 3], "UINT8")
    tensor.set_data_from_numpy(batch)
    client.infer("cnn_float32.tflite", [tensor])
    text = requests.get(f"http://{server}/metrics", timeout=10).text
    assert 'cifar_batch_size_count{model="cnn_float32.tflite"}' in text
    assert 'model="cnn_float32.tflite",status="200"' in text
