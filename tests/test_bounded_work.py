"""Bounded work: each model's queue has a maximum depth (beyond it HTTP 503 and gRPC UNAVAILABLE
at once), a call whose client is gone is withdrawn from its batch before it runs, and the
connection caps of both protocols fit the open-file limit together."""

from __future__ import annotations

import asyncio
import threading

import grpc
import numpy as np
import pytest
import requests

from cifar_deploy.runtime import load_predictor
from cifar_deploy.serving import limits
from cifar_deploy.serving.batcher import DynamicBatcher, QueueFull
from cifar_deploy.serving.grpc_server import SERVICE
from cifar_deploy.serving.limits import ServerLimits, fit_to_open_files
from cifar_deploy.serving.server import build_server_app
from tests.helpers import serving
from tests.test_grpc_attacks import infer_message


def image(value: int = 0) -> np.ndarray:
    return np.full((1, 32, 32, 3), value, np.uint8)


def gated_predict(seen: list, gate: threading.Event):
    """A model that records each batch's first pixels and waits for ``gate`` before answering."""

    def predict(x):
        seen.append([int(v) for v in x[:, 0, 0, 0]])
        gate.wait(10)
        return np.zeros((len(x), 10), np.float32)

    return predict


def test_a_cancelled_call_is_withdrawn_before_its_batch_runs():
    seen, gate = [], threading.Event()

    async def main():
        batcher = DynamicBatcher(gated_predict(seen, gate), max_batch_size=1)
        batcher.start()
        first = asyncio.ensure_future(batcher.submit(image(1)))  # runs, holding the worker
        await asyncio.sleep(0.05)
        gone = asyncio.ensure_future(batcher.submit(image(2)))  # queued behind it
        kept = asyncio.ensure_future(batcher.submit(image(3)))
        await asyncio.sleep(0.01)
        assert batcher.queue_depth == 2
        gone.cancel()  # its client reset the stream
        await asyncio.sleep(0.01)
        assert batcher.queue_depth == 1
        gate.set()
        await asyncio.gather(first, kept)
        await batcher.stop()

    asyncio.run(main())
    assert seen == [[1], [3]]  # request 2 never reached the model


def test_a_full_queue_refuses_at_once_and_takes_requests_again_once_it_drains():
    seen, gate = [], threading.Event()

    async def main():
        batcher = DynamicBatcher(gated_predict(seen, gate), max_batch_size=1, max_queue=2)
        batcher.start()
        running = asyncio.ensure_future(batcher.submit(image(1)))
        await asyncio.sleep(0.05)  # taken: the queue is empty again
        queued = [asyncio.ensure_future(batcher.submit(image(v))) for v in (2, 3)]
        await asyncio.sleep(0.01)
        with pytest.raises(QueueFull, match="queue is full \\(2 requests waiting"):
            await batcher.submit(image(4))
        gate.set()
        await asyncio.gather(running, *queued)
        assert (await batcher.submit(image(5))).shape == (1, 10)
        await batcher.stop()

    asyncio.run(main())
    assert [s[0] for s in seen] == [1, 2, 3, 5]


@pytest.fixture
def blocked(tiny_onnx):
    """A served model whose predictions wait for a gate, with a queue of 1."""
    predictor = load_predictor(tiny_onnx)
    seen, gate = [], threading.Event()
    predictor.predict = gated_predict(seen, gate)
    served_limits = ServerLimits(max_queue=1)
    app = build_server_app(predictor, "cnn", max_batch_size=1, grpc_port=0, limits=served_limits)
    with serving(app, served_limits) as http:
        yield app, http, seen, gate
        gate.set()


def _infer_http(http: str, results: list) -> None:
    body = {
        "inputs": [
            {"name": "images", "datatype": "UINT8", "shape": [1, 32, 32, 3], "data": [0] * 3072}
        ]
    }
    answer = requests.post(f"http://{http}/v2/models/cnn/infer", json=body, timeout=30)
    results.append(answer)


def test_beyond_the_queue_http_answers_503_and_grpc_unavailable(blocked):
    app, http, seen, gate = blocked
    results: list = []
    waiting = [threading.Thread(target=_infer_http, args=(http, results)) for _ in range(2)]
    for thread in waiting:  # one runs (held by the gate), one waits in the queue
        thread.start()
    deadline = 100
    while app.state.repository.models["cnn"].batcher.queue_depth < 1 and deadline:
        threading.Event().wait(0.05)
        deadline -= 1
    refused: list = []
    _infer_http(http, refused)
    assert refused[0].status_code == 503
    assert "queue is full" in refused[0].json()["error"]
    with grpc.insecure_channel(f"127.0.0.1:{app.state.grpc_port}") as channel:
        with pytest.raises(grpc.RpcError) as info:
            channel.unary_unary(f"/{SERVICE}/ModelInfer")(infer_message(), timeout=10)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "queue is full" in info.value.details()
    gate.set()
    for thread in waiting:
        thread.join(30)
    assert [r.status_code for r in results] == [200, 200]


def test_connection_caps_shrink_together_to_fit_the_open_file_limit(monkeypatch):
    monkeypatch.setattr(limits, "raise_open_file_limit", lambda wanted: 264)
    asked = ServerLimits(max_connections=1000, grpc_max_connections=200)
    fitted, line = fit_to_open_files(asked, grpc=True)
    room = 264 - limits.RESERVED_FILES
    assert fitted.max_connections + fitted.grpc_max_connections <= room
    assert fitted.max_connections > fitted.grpc_max_connections > 0
    assert line.startswith("this process may open only 264 files: at most ")
    assert "(asked for 1000 and 200)" in line
    http_only, _ = fit_to_open_files(asked, grpc=False)
    assert http_only.max_connections == room and http_only.grpc_max_connections == 200


def test_caps_that_fit_are_kept_as_asked(monkeypatch):
    monkeypatch.setattr(limits, "raise_open_file_limit", lambda wanted: wanted)
    asked = ServerLimits()
    assert fit_to_open_files(asked, grpc=True) == (asked, None)
