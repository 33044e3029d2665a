"""Specification of the HTTP inference lane (issue #13): a plain HTTP/1.1 inference request is
answered from the connection's protocol, without an ASGI cycle, and gets exactly what the ASGI
path would give it: the same bytes, the same errors, the same metrics; the connection stays
usable after an error; requests the lane does not take (chunked bodies, ``Expect``, HTTP/1.0,
``Connection: close``, percent-encoded paths, pipelined requests) still get their answers; a
body that arrives in pieces is gathered, one that leaves halfway frees its bytes, and a
stopping server answers the request it holds before it closes the connection."""

from __future__ import annotations

import json
import socket
import threading
import time

import numpy as np
import pytest
import requests

from cifar_deploy.runtime import load_predictor
from cifar_deploy.serving.server import build_server_app
from tests.helpers import serving, serving_server

PIXELS = np.random.default_rng(0).integers(0, 256, (1, 32, 32, 3), dtype=np.uint8)


def binary_request(
    path: str = "/v2/models/cnn/infer",
    *,
    version: str = "HTTP/1.1",
    header: dict | None = None,
    pixels: np.ndarray = PIXELS,
    extra: bytes = b"",
    chunked: bool = False,
) -> tuple[bytes, bytes]:
    """(request head, body) of a binary-tensor inference request, as tritonclient sends it
    (``extra``: more header lines; ``chunked``: the body in one chunk, without a length)."""
    raw = pixels.tobytes()
    header = header or {
        "inputs": [
            {
                "name": "images",
                "shape": list(pixels.shape),
                "datatype": "UINT8",
                "parameters": {"binary_data_size": len(raw)},
            }
        ],
        "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}}],
    }
    text = json.dumps(header).encode()
    body = text + raw
    length = b"Transfer-Encoding: chunked" if chunked else b"Content-Length: %d" % len(body)
    head = b"POST %s %s\r\nHost: x\r\n%s\r\n" % (path.encode(), version.encode(), length)
    head += b"Inference-Header-Content-Length: %d\r\n" % len(text) + extra + b"\r\n"
    if chunked:
        body = b"%x\r\n" % len(body) + body + b"\r\n0\r\n\r\n"
    return head, body


class Reader:
    """Whole HTTP responses, one after another, from a socket."""

    def __init__(self, conn: socket.socket):
        self.conn, self.buffer = conn, b""

    def _fill(self) -> None:
        chunk = self.conn.recv(65536)
        if not chunk:
            raise ConnectionError("closed by the server")
        self.buffer += chunk

    def response(self) -> tuple[int, dict[str, str], bytes]:
        while b"\r\n\r\n" not in self.buffer:
            self._fill()
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = dict(line.lower().split(": ", 1) for line in lines[1:])
        length = int(headers.get("content-length", 0))
        while len(self.buffer) < length:
            self._fill()
        body, self.buffer = self.buffer[:length], self.buffer[length:]
        return int(lines[0].split()[1]), headers, body


def connect(address: str) -> socket.socket:
    host, port = address.split(":")
    return socket.create_connection((host, int(port)), timeout=30)


def exchange(address: str, request: bytes) -> tuple[int, dict[str, str], bytes]:
    with connect(address) as conn:
        conn.sendall(request)
        return Reader(conn).response()


class CountingLane:
    """Counts the requests the lane answers (the app's lane, wrapped before the server starts)."""

    def __init__(self, app):
        self.count, answer = 0, app.lane.answer

        async def counted(*args):
            self.count += 1
            return await answer(*args)

        app.lane.answer = counted


@pytest.fixture(scope="module")
def app(tiny_onnx):
    return build_server_app(load_predictor(tiny_onnx), "cnn", max_queue_delay_ms=1)


@pytest.fixture(scope="module")
def lane(app):
    return CountingLane(app)


@pytest.fixture(scope="module")
def server(app, lane):
    with serving(app) as address:
        yield address


def asgi_answer(address: str, path: str = "/v2/models/cnn/infer", **kwargs):
    """The same request over HTTP/1.0, which the lane leaves to uvicorn's ASGI path."""
    head, body = binary_request(path, version="HTTP/1.0", **kwargs)
    return exchange(address, head + body)


def test_a_plain_request_takes_the_lane_and_gets_the_bytes_the_asgi_path_gives(server, lane):
    before = lane.count
    status, headers, body = exchange(server, b"".join(binary_request()))
    assert lane.count == before + 1
    asgi_status, asgi_headers, asgi_body = asgi_answer(server)
    assert lane.count == before + 1  # HTTP/1.0 did not take it
    assert (status, body) == (asgi_status, asgi_body) == (200, body)
    for name in ("content-type", "inference-header-content-length"):
        assert headers[name] == asgi_headers[name]
    text = json.loads(body[: int(headers["inference-header-content-length"])])
    assert text["outputs"][0]["shape"] == [1, 10]
    assert "connection" not in headers  # kept alive


@pytest.mark.parametrize(
    ("path", "header", "status", "says"),
    [
        ("/v2/models/cnn/infer", {"inputs": "nope"}, 400, "with an 'inputs' list"),
        ("/v2/models/nope/infer", None, 404, "unknown model 'nope'"),
        ("/v2/models/cnn/versions/7/infer", None, 404, "has version '1', not '7'"),
    ],
)
def test_errors_on_the_lane_are_the_asgi_paths_and_the_connection_stays_open(
    server, lane, path, header, status, says
):
    before = lane.count
    with connect(server) as conn:
        reader = Reader(conn)
        conn.sendall(b"".join(binary_request(path, header=header)))
        got_status, headers, body = reader.response()
        conn.sendall(b"".join(binary_request()))  # the same connection still serves
        assert reader.response()[0] == 200
    assert lane.count == before + 2
    assert (got_status, body) == asgi_answer(server, path, header=header)[::2]
    assert got_status == status and says in json.loads(body)["error"]
    assert headers["content-type"] == "application/json" and "connection" not in headers


@pytest.mark.parametrize(
    "variant",
    ["chunked body", "expect 100-continue", "connection close", "percent-encoded path"],
)
def test_requests_the_lane_does_not_take_still_get_their_answer(server, lane, variant):
    if variant == "chunked body":
        head, body = binary_request(chunked=True)
    elif variant == "expect 100-continue":
        head, body = binary_request(extra=b"Expect: 100-continue\r\n")
    elif variant == "connection close":
        head, body = binary_request(extra=b"Connection: close\r\n")
    else:
        head, body = binary_request("/v2/models/cn%6E/infer")
    before = lane.count
    with connect(server) as conn:
        reader = Reader(conn)
        conn.sendall(head)
        if variant == "expect 100-continue":
            assert reader.response()[0] == 100  # asked for, and given, before the body
        conn.sendall(body)
        status, _, answer = reader.response()
    assert lane.count == before
    assert (status, answer) == asgi_answer(server)[::2]


def test_requests_pipelined_on_one_connection_are_answered_in_order(server, lane):
    health = b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n"
    request = b"".join(binary_request())
    with connect(server) as conn:
        reader = Reader(conn)
        conn.sendall(request + health + request)  # one write: the second and third wait
        first, second, third = (reader.response() for _ in range(3))
    assert first[0] == second[0] == third[0] == 200
    assert first[2] == third[2] and json.loads(second[2]) == {"live": True}


def test_a_body_arriving_in_pieces_is_gathered(server, lane):
    head, body = binary_request()
    before = lane.count
    with connect(server) as conn:
        conn.sendall(head)
        for start in range(0, len(body), 1000):
            time.sleep(0.02)
            conn.sendall(body[start : start + 1000])
        status, _, answer = Reader(conn).response()
    assert lane.count == before + 1
    assert (status, answer) == asgi_answer(server)[::2]


def test_a_client_leaving_mid_body_frees_its_bytes_and_one_leaving_mid_answer_harms_nothing(
    app, server
):
    budget = app.state.repository.body
    head, body = binary_request()
    with connect(server) as conn:
        conn.sendall(head + body[:2000])
        deadline = time.time() + 10
        while budget.buffered != 2000 and time.time() < deadline:
            time.sleep(0.01)
        assert budget.buffered == 2000  # counted in the server-wide budget while held
    deadline = time.time() + 10
    while budget.buffered and time.time() < deadline:
        time.sleep(0.01)
    assert budget.buffered == 0
    for _ in range(3):  # gone before the answer is written
        with connect(server) as conn:
            conn.sendall(head + body)
    assert exchange(server, head + body)[0] == 200


def test_lane_answers_are_counted_under_their_route_in_the_metrics(server):
    def count(status: str, endpoint: str = "/v2/models/{name}/versions/{version}/infer") -> float:
        key = f'cifar_requests_total{{endpoint="{endpoint}",model="cnn",status="{status}"}}'
        text = requests.get(f"http://{server}/metrics", timeout=10).text
        return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(key))

    ok, bad = count("200"), count("404")
    exchange(server, b"".join(binary_request("/v2/models/cnn/versions/1/infer")))
    exchange(server, b"".join(binary_request("/v2/models/cnn/versions/2/infer")))
    assert (count("200"), count("404")) == (ok + 1, bad + 1)


def test_a_stopping_server_answers_the_lane_request_it_holds_then_closes(tiny_onnx):
    predictor = load_predictor(tiny_onnx)
    running, release = threading.Event(), threading.Event()
    predict = predictor.predict

    def held_predict(images, batch_size=256):
        running.set()
        release.wait(30)
        return predict(images, batch_size)

    predictor.predict = held_predict
    app = build_server_app(predictor, "cnn", max_queue_delay_ms=1)
    try:
        with serving_server(app) as (address, server), connect(address) as conn:
            conn.sendall(b"".join(binary_request()))
            assert running.wait(30)
            server.should_exit = True  # stop while the answer is being computed
            time.sleep(0.3)
            release.set()
            status, headers, _ = Reader(conn).response()
            assert conn.recv(1) == b""  # and then the connection is closed
    finally:
        release.set()
    assert status == 200 and headers["connection"] == "close"
