"""Specification of the gRPC Open Inference Protocol service (`serve --grpc-port`), driven by
tritonclient's gRPC client: the same answers as in process, the same checks and messages as REST,
with gRPC status codes."""

from __future__ import annotations

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from cifar_deploy.runtime import load_predictor
from cifar_deploy.serving.server import build_server_app
from tests.helpers import serving


@pytest.fixture(scope="module")
def predictor(tiny_onnx):
    return load_predictor(tiny_onnx)


@pytest.fixture(scope="module")
def app(predictor):
    app = build_server_app(predictor, "cnn", max_queue_delay_ms=5, grpc_port=0)
    with serving(app):
        yield app


@pytest.fixture(scope="module")
def client(app):
    client = grpcclient.InferenceServerClient(url=f"127.0.0.1:{app.state.grpc_port}")
    yield client
    client.close()


def images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)


def infer(client, batch, datatype="UINT8", model="cnn", name="images", outputs=("probabilities",)):
    tensor = grpcclient.InferInput(name, list(batch.shape), datatype)
    tensor.set_data_from_numpy(batch)
    wanted = [grpcclient.InferRequestedOutput(o) for o in outputs]
    return client.infer(model, [tensor], outputs=wanted)


def test_health_metadata_and_triton_configuration(client):
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("cnn")
    assert not client.is_model_ready("other")
    meta = client.get_model_metadata("cnn", as_json=True)
    assert meta["inputs"] == [
        {"name": "images", "datatype": "FP32", "shape": ["-1", "32", "32", "3"]}
    ]
    config = client.get_model_config("cnn", as_json=True)["config"]
    assert config["max_batch_size"] == 64 and config["input"][0]["dims"] == ["32", "32", "3"]
    index = client.get_model_repository_index(as_json=True)["models"]
    assert index == [{"name": "cnn", "version": "1", "state": "READY"}]


@pytest.mark.parametrize("datatype", ["UINT8", "FP32"])
def test_infer_equals_the_in_process_predictor(client, predictor, datatype):
    batch = images(5, seed=1)
    sent = batch if datatype == "UINT8" else batch.astype(np.float32)
    out = infer(client, sent, datatype).as_numpy("probabilities")
    np.testing.assert_allclose(out, predictor.predict(batch), atol=1e-6)


@pytest.mark.parametrize(
    "kwargs, code, message",
    [
        ({"model": "other"}, "NOT_FOUND", "unknown model 'other'; this server serves 'cnn'"),
        ({"name": "pixels"}, "INVALID_ARGUMENT", "unknown input 'pixels'; expected 'images'"),
        ({"datatype": "INT32"}, "INVALID_ARGUMENT", "input datatype 'INT32' is not accepted"),
        ({"outputs": ("logits",)}, "INVALID_ARGUMENT", "unknown output 'logits'"),
    ],
)
def test_bad_requests_get_the_rest_messages_with_grpc_codes(client, kwargs, code, message):
    batch = images(1)
    if kwargs.get("datatype") == "INT32":
        batch = batch.astype(np.int32)
    with pytest.raises(InferenceServerException) as info:
        infer(client, batch, **kwargs)
    assert code in str(info.value.status()) and message in info.value.message()


def test_a_wrong_shape_is_invalid_argument(client):
    tensor = grpcclient.InferInput("images", [1, 16, 16, 3], "UINT8")
    tensor.set_data_from_numpy(np.zeros((1, 16, 16, 3), np.uint8))
    with pytest.raises(InferenceServerException, match=r"expected shape \[N, 32, 32, 3\]"):
        client.infer("cnn", [tensor])


def test_calls_are_counted_in_the_request_metrics_by_method_model_and_code(app, client):
    registry = app.state.repository.registry
    infer_path = "/inference.GRPCInferenceService/ModelInfer"

    def calls(endpoint, model, status):
        labels = {"endpoint": endpoint, "model": model, "status": status}
        return registry.get_sample_value("cifar_requests_total", labels) or 0.0

    def seconds_observed(endpoint, model):
        labels = {"endpoint": endpoint, "model": model}
        return registry.get_sample_value("cifar_request_latency_seconds_count", labels) or 0.0

    before = {
        "ok": calls(infer_path, "cnn", "OK"),
        "bad": calls(infer_path, "cnn", "INVALID_ARGUMENT"),
        "unknown": calls(infer_path, "", "NOT_FOUND"),
        "ready": calls("/inference.GRPCInferenceService/ModelReady", "cnn", "OK"),
        "latency": seconds_observed(infer_path, "cnn"),
    }
    for seed in range(3):
        infer(client, images(1, seed))
    with pytest.raises(InferenceServerException):
        infer(client, images(1), name="pixels")
    for name in ("other-1", "other-2"):  # unknown names share the empty model label
        with pytest.raises(InferenceServerException):
            infer(client, images(1), model=name)
    assert client.is_model_ready("cnn")
    assert calls(infer_path, "cnn", "OK") - before["ok"] == 3
    assert calls(infer_path, "cnn", "INVALID_ARGUMENT") - before["bad"] == 1
    assert calls(infer_path, "", "NOT_FOUND") - before["unknown"] == 2
    assert calls("/inference.GRPCInferenceService/ModelReady", "cnn", "OK") - before["ready"] == 1
    assert seconds_observed(infer_path, "cnn") - before["latency"] == 4
    counted = registry.collect()
    models = {s.labels["model"] for m in counted for s in m.samples if "model" in s.labels}
    assert models == {"cnn", ""}
