"""Specification of the serving hot path's economies (issue #13): a response leaves in one
write, a response carries an id only when the request gave one, the framework is bypassed for
inference but its routes still answer errors as JSON, and the batcher keeps its contract
without a task per request."""

from __future__ import annotations

import asyncio
import json
import time

import numpy as np
import pytest
import requests

from cifar_deploy.runtime import load_predictor
from cifar_deploy.serving.batcher import DynamicBatcher
from cifar_deploy.serving.limits import OneWriteResponses
from cifar_deploy.serving.server import build_server_app
from tests.helpers import serving


class RecordingTransport:
    def __init__(self):
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name):
        return ("127.0.0.1", 1234) if name == "peername" else None


def recently_busy(batcher: DynamicBatcher, n: int) -> None:
    """As if ``n`` requests had been in flight together a moment ago (call inside the loop)."""
    batcher._in_flight = n
    batcher._note_in_flight(asyncio.get_running_loop().time())
    batcher._in_flight = 0


def test_the_response_head_and_body_leave_in_one_write():
    async def main():
        transport = RecordingTransport()
        wrapped = OneWriteResponses(transport)
        wrapped.write(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\n")
        assert transport.writes == []  # the head waits for the body
        wrapped.write(b"body")
        await asyncio.sleep(0)  # the scheduled flush finds nothing left
        return transport.writes

    assert asyncio.run(main()) == [b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nbody"]


def test_a_head_without_body_is_flushed_on_the_next_turn_or_at_close():
    async def main():
        late, closing = RecordingTransport(), RecordingTransport()
        OneWriteResponses(late).write(b"HTTP/1.1 204 No Content\r\n\r\n")
        wrapped = OneWriteResponses(closing)
        wrapped.write(b"HTTP/1.1 200 OK\r\n\r\n")
        wrapped.close()  # flushed before the close, not lost
        flushed_at_close = list(closing.writes)
        await asyncio.sleep(0)
        return late.writes, flushed_at_close, closing.closed

    late, flushed_at_close, closed = asyncio.run(main())
    assert late == [b"HTTP/1.1 204 No Content\r\n\r\n"]
    assert flushed_at_close == [b"HTTP/1.1 200 OK\r\n\r\n"] and closed


def test_other_transport_calls_pass_through():
    transport = RecordingTransport()
    assert OneWriteResponses(transport).get_extra_info("peername") == ("127.0.0.1", 1234)


@pytest.fixture(scope="module")
def server(tiny_onnx):
    with serving(
        build_server_app(load_predictor(tiny_onnx), "cnn", max_queue_delay_ms=1)
    ) as address:
        yield address


def _infer(server: str, **extra) -> dict:
    body = {
        "inputs": [
            {"name": "images", "shape": [1, 32, 32, 3], "datatype": "UINT8", "data": [7] * 3072}
        ],
        **extra,
    }
    reply = requests.post(f"http://{server}/v2/models/cnn/infer", json=body, timeout=30)
    assert reply.status_code == 200, reply.text
    return reply.json()


def test_the_response_echoes_the_request_id_and_has_none_when_none_was_given(server):
    assert _infer(server, id="req-42")["id"] == "req-42"
    assert "id" not in _infer(server)


def test_a_binary_answer_names_the_request_id_only_when_given_and_carries_the_rows():
    from cifar_deploy.serving.protocol import encode_infer_response

    binary = {"parameters": {"binary_data_output": True}}
    for rows in (1, 3, 1):  # the header of a shape is kept: the later answers reuse it
        probs = np.arange(rows * 10, dtype=np.float32).reshape(rows, 10)
        for request_id in ("req-7", None, "req-8"):
            request = {**binary, "id": request_id} if request_id else binary
            encoded = encode_infer_response(request, "cnn", probs)
            (name, length), *_ = encoded.headers
            assert name == b"inference-header-content-length"
            header = json.loads(encoded.body[: int(length)])
            assert header.get("id") == request_id
            assert header["outputs"][0]["shape"] == [rows, 10]
            assert encoded.body[int(length) :] == probs.tobytes()


def test_responses_name_no_server_software(server):
    reply = requests.get(f"http://{server}/v2/health/ready", timeout=10)
    assert reply.status_code == 200 and "server" not in reply.headers
    assert "date" in reply.headers  # HTTP/1.1 wants one


def test_an_unexpected_error_in_a_framework_route_is_a_json_500(tiny_onnx, caplog):
    app = build_server_app(load_predictor(tiny_onnx), "cnn")

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    app.state.repository.model_metadata = broken
    with serving(app) as address:
        reply = requests.get(f"http://{address}/v2/models/cnn", timeout=10)
        assert reply.status_code == 500
        assert reply.json() == {"error": "internal error: RuntimeError"}
        # and the server keeps serving
        assert requests.get(f"http://{address}/v2/health/live", timeout=10).json() == {"live": True}
    assert "RuntimeError: boom" in caplog.text  # logged with its traceback


def test_the_batcher_keeps_a_request_that_does_not_fit_first_in_the_next_batch():
    seen = []

    def predict(x):
        seen.append([int(v) for v in x[:, 0, 0, 0]])
        return np.zeros((len(x), 10), np.float32)

    async def main():
        batcher = DynamicBatcher(predict, max_batch_size=4, max_queue_delay_ms=50)
        batcher.start()
        sizes = [3, 2, 1]  # 3 + 2 > 4: the 2-row request waits, and leads the next batch
        rows = [np.full((n, 32, 32, 3), i, np.uint8) for i, n in enumerate(sizes)]
        outs = await asyncio.gather(*(batcher.submit(r) for r in rows))
        await batcher.stop()
        return [len(o) for o in outs]

    assert asyncio.run(main()) == [3, 2, 1]
    assert seen == [[0, 0, 0], [1, 1, 2]]


def test_a_failed_batch_fails_each_of_its_callers_and_the_next_batch_still_runs():
    calls = []

    def predict(x):
        calls.append(len(x))
        if len(calls) == 1:
            raise ValueError("runtime fell over")
        return np.ones((len(x), 10), np.float32)

    async def main():
        batcher = DynamicBatcher(predict, max_batch_size=8, max_queue_delay_ms=0)
        batcher.start()
        first = await asyncio.gather(
            batcher.submit(np.zeros((1, 32, 32, 3), np.uint8)), return_exceptions=True
        )
        second = await batcher.submit(np.zeros((2, 32, 32, 3), np.uint8))
        await batcher.stop()
        return first, second

    first, second = asyncio.run(main())
    assert isinstance(first[0], ValueError) and str(first[0]) == "runtime fell over"
    assert second.shape == (2, 10) and (second == 1).all()


def test_metrics_count_each_request_once_per_label_set(server):
    before = requests.get(f"http://{server}/metrics", timeout=10).text
    for _ in range(3):
        _infer(server)
    after = requests.get(f"http://{server}/metrics", timeout=10).text

    def count(text: str) -> float:
        key = 'cifar_requests_total{endpoint="/v2/models/{name}/infer",model="cnn",status="200"}'
        for line in text.splitlines():
            if line.startswith(key):
                return float(line.split()[-1])
        return 0.0

    assert count(after) - count(before) == 3


def test_the_batch_goes_at_once_when_no_further_request_can_come():
    asked = []

    def more_possible(requests_in_batch: int) -> bool:
        asked.append(requests_in_batch)
        return requests_in_batch < 3  # three clients, each with one request at a time

    seen = []

    def predict(x):
        seen.append(len(x))
        return np.zeros((len(x), 10), np.float32)

    async def main():
        # A minute of queue delay: only the early end can make this finish in time.
        batcher = DynamicBatcher(
            predict, 64, max_queue_delay_ms=60_000, more_possible=more_possible
        )
        batcher.start()
        recently_busy(batcher, 8)  # so it would wait for more
        one = np.zeros((1, 32, 32, 3), np.uint8)
        outs = await asyncio.wait_for(asyncio.gather(*(batcher.submit(one) for _ in range(3))), 10)
        await batcher.stop()
        return outs

    assert [len(o) for o in asyncio.run(main())] == [1, 1, 1]
    assert seen == [3] and asked[-1] == 3


def test_the_server_counts_its_open_connections(tiny_onnx):
    import socket

    app = build_server_app(load_predictor(tiny_onnx), "cnn")
    with serving(app) as address:
        host, port = address.split(":")
        sockets = [socket.create_connection((host, int(port))) for _ in range(3)]
        try:
            deadline = time.time() + 10
            while len(app.open_connections) != 3 and time.time() < deadline:
                time.sleep(0.02)
            assert len(app.open_connections) == 3
        finally:
            for s in sockets:
                s.close()
        deadline = time.time() + 10
        while len(app.open_connections) != 0 and time.time() < deadline:
            time.sleep(0.02)
        assert len(app.open_connections) == 0


def test_stop_answers_a_batch_that_is_still_forming():
    async def main():
        batcher = DynamicBatcher(lambda x: np.ones((len(x), 10), np.float32), 8, 200)
        batcher.start()
        recently_busy(batcher, 8)  # so the batch waits for more
        pending = asyncio.ensure_future(batcher.submit(np.zeros((1, 32, 32, 3), np.uint8)))
        await asyncio.sleep(0.02)  # taken from the queue, waiting out the 200 ms delay
        assert batcher.queue_depth == 0 and not pending.done()
        await asyncio.wait_for(batcher.stop(), 10)
        return await asyncio.wait_for(pending, 1)

    assert asyncio.run(main()).shape == (1, 10)


def test_a_batch_goes_once_it_holds_as_many_requests_as_were_lately_in_flight_together():
    seen = []

    def predict(x):
        seen.append(len(x))
        return np.zeros((len(x), 10), np.float32)

    async def client(batcher):  # closed loop: one request at a time, three in a row
        for _ in range(3):
            await batcher.submit(np.zeros((1, 32, 32, 3), np.uint8))

    async def main():
        # A minute of queue delay: only the in-flight count can end each wait in time.
        batcher = DynamicBatcher(predict, 64, max_queue_delay_ms=60_000)
        batcher.start()
        await asyncio.wait_for(asyncio.gather(*(client(batcher) for _ in range(4))), 10)
        await batcher.stop()
        return batcher.expected_together()

    assert asyncio.run(main()) == 4
    assert seen == [4, 4, 4]  # every round of the four clients is one batch


def test_requests_still_arriving_when_the_delay_passes_join_the_batch_and_then_it_goes():
    seen = []

    def predict(x):
        seen.append(len(x))
        return np.zeros((len(x), 10), np.float32)

    one = np.zeros((1, 32, 32, 3), np.uint8)

    async def main():
        batcher = DynamicBatcher(predict, 64, max_queue_delay_ms=1)
        batcher.start()
        recently_busy(batcher, 8)  # eight expected: the batch waits for more
        calls = []
        for _ in range(6):  # an event loop busy reading requests: one per turn, 0.5 ms each
            calls.append(asyncio.ensure_future(batcher.submit(one)))
            time.sleep(0.0005)
            await asyncio.sleep(0)
        # Six arrived over 3 ms, well past the 1 ms delay, and no more come: the batch holds
        # all six, then goes without waiting for the eight it expected.
        await asyncio.wait_for(asyncio.gather(*calls), 10)
        await batcher.stop()

    asyncio.run(main())
    assert seen == [6]


def test_the_in_flight_peak_is_forgotten_after_two_quiet_windows(monkeypatch):
    import cifar_deploy.serving.batcher as batcher_module

    monkeypatch.setattr(batcher_module, "PEAK_WINDOW_S", 0.05)
    one = np.zeros((1, 32, 32, 3), np.uint8)

    async def main():
        batcher = DynamicBatcher(lambda x: np.zeros((len(x), 10), np.float32), 64, 60_000)
        batcher.start()
        await asyncio.gather(*(batcher.submit(one) for _ in range(8)))
        busy = batcher.expected_together()
        await asyncio.sleep(0.15)  # three windows without a request
        # A lone request now goes at once although the delay is a minute.
        await asyncio.wait_for(batcher.submit(one), 10)
        quiet = batcher.expected_together()
        await batcher.stop()
        return busy, quiet

    assert asyncio.run(main()) == (8, 1)
