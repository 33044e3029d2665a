"""Specification of the Open Inference Protocol server, driven by tritonclient's HTTP client
(a real third-party KServe V2 client) on an ephemeral loopback port."""

from __future__ import annotations

import copy
import io
import json
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests
import tritonclient.http as httpclient
from PIL import Image
from tritonclient.utils import InferenceServerException

from cifar_deploy.runtime import load_predictor
from cifar_deploy.serving.server import build_server_app
from tests.helpers import serving

LIMIT = 1 * 2**20  # a 1 MB payload limit, so the over-limit test stays small


@pytest.fixture(scope="module")
def artifact(tiny_onnx):
    return tiny_onnx


@pytest.fixture(scope="module")
def predictor(artifact):
    return load_predictor(artifact)


@pytest.fixture(scope="module")
def server(predictor):
    app = build_server_app(
        predictor, "cnn", max_batch_size=64, max_queue_delay_ms=5, max_payload_bytes=LIMIT
    )
    with serving(app) as address:
        yield address


@pytest.fixture
def client(server):
    return httpclient.InferenceServerClient(url=server, concurrency=32)


def images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)


def infer(client, batch: np.ndarray, binary: bool = True, datatype: str = "FP32"):
    tensor = httpclient.InferInput("images", list(batch.shape), datatype)
    tensor.set_data_from_numpy(
        batch.astype(np.float32 if datatype == "FP32" else np.uint8), binary_data=binary
    )
    wanted = [httpclient.InferRequestedOutput("probabilities", binary_data=binary)]
    return client.infer("cnn", [tensor], outputs=wanted).as_numpy("probabilities")


def test_health_and_model_metadata(client):
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("cnn")
    meta = client.get_model_metadata("cnn")
    assert meta["name"] == "cnn"
    assert meta["inputs"] == [{"name": "images", "datatype": "FP32", "shape": [-1, 32, 32, 3]}]
    assert meta["outputs"] == [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]}]
    assert meta["parameters"]["class_names"][0] == "airplane"


def test_triton_model_configuration_describes_the_model_and_its_batching(client):
    config = client.get_model_config("cnn")  # perf_analyzer's first request
    assert config["max_batch_size"] == 64
    assert config["input"] == [
        {"name": "images", "data_type": "TYPE_FP32", "format": "FORMAT_NHWC", "dims": [32, 32, 3]}
    ]
    assert config["output"] == [{"name": "probabilities", "data_type": "TYPE_FP32", "dims": [10]}]
    assert config["dynamic_batching"] == {"max_queue_delay_microseconds": 5000}
    assert client.get_model_config("cnn", model_version="1") == config


@pytest.mark.parametrize("binary", [True, False])
@pytest.mark.parametrize("datatype", ["FP32", "UINT8"])
def test_infer_equals_the_in_process_predictor(client, predictor, binary, datatype):
    batch = images(5, seed=1)
    out = infer(client, batch, binary=binary, datatype=datatype)
    np.testing.assert_allclose(out, predictor.predict(batch), atol=1e-6)


def test_infer_without_requested_outputs_returns_binary(client, predictor):
    batch = images(2, seed=2)
    tensor = httpclient.InferInput("images", [2, 32, 32, 3], "UINT8")
    tensor.set_data_from_numpy(batch)
    out = client.infer("cnn", [tensor]).as_numpy("probabilities")
    np.testing.assert_allclose(out, predictor.predict(batch), atol=1e-6)


def _encoded(fmt: str, size=(57, 41)) -> bytes:
    img = Image.fromarray(
        np.random.default_rng(3).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    )
    buffer = io.BytesIO()
    img.save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_classify_an_uploaded_image(server, predictor, fmt):
    data = _encoded(fmt)
    r = requests.post(
        f"http://{server}/v1/classify?top=3", files={"file": (f"x.{fmt.lower()}", data)}, timeout=30
    )
    assert r.status_code == 200, r.text
    preds = r.json()["predictions"]
    assert len(preds) == 3 and preds[0]["probability"] >= preds[1]["probability"]
    resized = np.asarray(
        Image.open(io.BytesIO(data)).convert("RGB").resize((32, 32), Image.Resampling.BILINEAR)
    )
    expected = predictor.predict(resized[None])[0]
    assert preds[0]["class_id"] == int(expected.argmax())
    assert preds[0]["probability"] == pytest.approx(float(expected.max()), abs=1e-6)


def _post_infer(server, body, headers=None, model="cnn"):
    return requests.post(
        f"http://{server}/v2/models/{model}/infer",
        data=body,
        headers=headers or {"Content-Type": "application/json"},
        timeout=30,
    )


def _json_request(shape, datatype="UINT8", data=None, name="images"):
    count = int(np.prod(shape)) if all(isinstance(d, int) and d > 0 for d in shape) else 0
    return json.dumps(
        {
            "inputs": [
                {
                    "name": name,
                    "shape": shape,
                    "datatype": datatype,
                    "data": data if data is not None else [0] * count,
                }
            ]
        }
    )


BAD_REQUESTS = {
    "wrong shape": (_json_request([1, 28, 28, 3]), "expected shape [N, 32, 32, 3]"),
    "wrong dtype": (_json_request([1, 32, 32, 3], "INT32"), "expected UINT8 or FP32"),
    "wrong element count": (
        _json_request([2, 32, 32, 3], data=[1] * 3072),
        "needs 6144 elements, received 3072",
    ),
    "NaN": (_json_request([1, 32, 32, 3], "FP32", data=[float("nan")] + [0] * 3071), "finite"),
    "out of range for uint8": (
        _json_request([1, 32, 32, 3], data=[300] + [0] * 3071),
        "0..255, received 0..300",
    ),
    "fractional uint8": (_json_request([1, 32, 32, 3], data=[1.5] + [0] * 3071), "whole numbers"),
    "malformed JSON": ('{"inputs": [', "malformed JSON"),
    "not an object": ("[1, 2]", "expected a JSON object"),
    "unknown input": (_json_request([1, 32, 32, 3], name="pixels"), "unknown input 'pixels'"),
    "strings as data": (_json_request([1, 32, 32, 3], data=["a"] * 3072), "numbers only"),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_infer_requests_get_a_4xx_json_error(server, case):
    body, fragment = BAD_REQUESTS[case]
    r = _post_infer(server, body)
    assert 400 <= r.status_code < 500, (r.status_code, r.text)
    assert fragment in r.json()["error"]
    assert requests.get(f"http://{server}/v2/health/live", timeout=10).status_code == 200


def test_bad_binary_header_and_sizes(server):
    head = json.dumps(
        {
            "inputs": [
                {
                    "name": "images",
                    "shape": [1, 32, 32, 3],
                    "datatype": "UINT8",
                    "parameters": {"binary_data_size": 100},
                }
            ]
        }
    ).encode()
    r = _post_infer(server, head + b"\0" * 100, {"Inference-Header-Content-Length": str(len(head))})
    assert r.status_code == 400 and "binary_data_size 100 does not match" in r.json()["error"]
    r = _post_infer(server, head, {"Inference-Header-Content-Length": "abc"})
    assert r.status_code == 400 and "must be an integer" in r.json()["error"]


def test_unknown_model_is_404(server, client):
    r = _post_infer(server, _json_request([1, 32, 32, 3]), model="resnet")
    assert r.status_code == 404 and "unknown model 'resnet'" in r.json()["error"]
    with pytest.raises(InferenceServerException):
        client.get_model_metadata("resnet")


def test_oversized_payload_is_413(server):
    r = _post_infer(server, b"x" * (LIMIT + 1))
    assert r.status_code == 413 and "exceeds the limit" in r.json()["error"]


@pytest.mark.parametrize(
    "payload, fragment",
    [
        (b"definitely not an image", "not a decodable PNG or JPEG"),
        (b"", "empty"),
        (None, "not a decodable"),  # None: a PNG cut after its header
    ],
)
def test_classify_rejects_what_is_not_an_image(server, payload, fragment):
    if payload is None:
        payload = _encoded("PNG")[:40]
    r = requests.post(
        f"http://{server}/v1/classify", files={"file": ("x.png", payload)}, timeout=30
    )
    assert 400 <= r.status_code < 500 and fragment in r.json()["error"], r.text


def test_classify_rejects_other_image_formats(server):
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, format="GIF")
    r = requests.post(
        f"http://{server}/v1/classify", files={"file": ("x.gif", buffer.getvalue())}, timeout=30
    )
    assert (
        r.status_code == 400 and "expected a PNG or JPEG image, received GIF" in r.json()["error"]
    )


def _metric(text: str, name: str, labels: str = "") -> float:
    pattern = re.escape(name) + (r"\{" + labels + r"\}" if labels else "") + r" ([0-9.e+]+)"
    return sum(float(v) for v in re.findall(pattern, text))


def test_concurrent_clients_get_their_own_rows_and_batches_merge(predictor):
    # 200 requests from 32 client threads at once (one tritonclient connection each). Each
    # inference takes 20 ms, so requests queue up behind a running batch and merge, whatever
    # the arrival pattern.
    slow = copy.copy(predictor)
    slow.predict = lambda x: (time.sleep(0.02), predictor.predict(x))[1]
    batches = [images(1 + i % 3, seed=100 + i) for i in range(200)]
    expected = [predictor.predict(b) for b in batches]
    local = threading.local()

    def send(i: int) -> np.ndarray:
        if not hasattr(local, "client"):
            local.client = httpclient.InferenceServerClient(url=server)
        batch = batches[i]
        tensor = httpclient.InferInput("images", list(batch.shape), "UINT8")
        tensor.set_data_from_numpy(batch, binary_data=bool(i % 2))
        wanted = [httpclient.InferRequestedOutput("probabilities", binary_data=bool(i % 2))]
        return local.client.infer("cnn", [tensor], outputs=wanted).as_numpy("probabilities")

    with serving(build_server_app(slow, "cnn", max_queue_delay_ms=5)) as server:
        with ThreadPoolExecutor(32) as pool:
            results = list(pool.map(send, range(200)))
        text = requests.get(f"http://{server}/metrics", timeout=10).text
    for got, want in zip(results, expected):
        np.testing.assert_allclose(got, want, atol=1e-6)
    calls = _metric(text, "cifar_batch_size_count", 'model="cnn"')
    rows = _metric(text, "cifar_batch_size_sum", 'model="cnn"')
    singles = _metric(text, "cifar_batch_size_bucket", 'model="cnn",le="1.0"')
    assert rows == sum(len(b) for b in batches)
    assert calls < 200 and singles < calls  # requests were merged: batches larger than one
    assert (
        _metric(
            text,
            "cifar_requests_total",
            'endpoint="/v2/models/\\{name\\}/infer",model="cnn",status="200"',
        )
        == 200
    )


def test_metrics_count_errors_by_status(server):
    _post_infer(server, "{")
    text = requests.get(f"http://{server}/metrics", timeout=10).text
    assert (
        _metric(
            text,
            "cifar_requests_total",
            'endpoint="/v2/models/\\{name\\}/infer",model="cnn",status="400"',
        )
        >= 1
    )
    assert "cifar_request_latency_seconds_bucket" in text and "cifar_queue_depth" in text
