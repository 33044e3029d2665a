"""What one hostile HTTP/2 client can do to everyone else on `serve --grpc-port`: each attack
of issue #25, on loopback, bounded to seconds. After each, the server's memory has grown by less
than 300 MB, HTTP health answers within 1 s, and a normal gRPC inference works.

Each attack sends raw frames (tests/h2raw.py) to the same server the CLI runs: the REST app
with its gRPC service on grpc.aio, configured by `grpc_server.server_options`.
"""

from __future__ import annotations

import threading
import time

import grpc
import numpy as np
import psutil
import pytest
import requests

from cifar_deploy.runtime import load_predictor
from cifar_deploy.serving.grpc_server import SERVICE, server_options
from cifar_deploy.serving.limits import ServerLimits
from cifar_deploy.serving.server import build_server_app
from tests import h2raw
from tests.helpers import serving

MB = 2**20
LIMITS = ServerLimits(header_timeout_s=1.0, grpc_max_connections=32, grpc_idle_s=2.0, max_queue=64)


def infer_message(rows: int = 1) -> bytes:
    from tritonclient.grpc import service_pb2 as pb

    tensor = pb.ModelInferRequest.InferInputTensor(
        name="images", datatype="UINT8", shape=[rows, 32, 32, 3]
    )
    pixels = np.random.default_rng(0).integers(0, 256, (rows, 32, 32, 3), np.uint8)
    request = pb.ModelInferRequest(
        model_name="cnn", inputs=[tensor], raw_input_contents=[pixels.tobytes()]
    )
    return request.SerializeToString()


class Served:
    def __init__(self, app, http: str, rows: list[int]):
        self.app, self.http, self.rows = app, http, rows
        self.grpc = f"127.0.0.1:{app.state.grpc_port}"

    def rss(self) -> int:
        return psutil.Process().memory_info().rss

    def health_seconds(self) -> float:
        started = time.perf_counter()
        answer = requests.get(f"http://{self.http}/v2/health/live", timeout=10)
        assert answer.status_code == 200
        return time.perf_counter() - started

    def grpc_infer_seconds(self) -> float:
        started = time.perf_counter()
        with grpc.insecure_channel(self.grpc) as channel:
            method = channel.unary_unary(f"/{SERVICE}/ModelInfer")
            answer = method(infer_message(), timeout=10)
        assert len(answer) > 40  # a ModelInferResponse with 10 probabilities
        return time.perf_counter() - started

    def assert_unharmed(self, rss_before: int) -> None:
        grown = (self.rss() - rss_before) / MB
        assert grown < 300, f"memory grew by {grown:.0f} MB"
        assert self.health_seconds() < 1.0
        assert self.grpc_infer_seconds() < 1.0


@pytest.fixture(scope="module")
def served(tiny_onnx):
    predictor = load_predictor(tiny_onnx)
    rows: list[int] = []
    predict = predictor.predict

    def counted(images):
        rows.append(len(images))
        return predict(images)

    predictor.predict = counted
    app = build_server_app(predictor, "cnn", grpc_port=0, limits=LIMITS)
    with serving(app, LIMITS) as http:
        yield Served(app, http, rows)


def test_the_limits_are_channel_arguments_this_grpcio_knows():
    """grpc core ignores an argument it does not know: each must be one it reads."""
    from grpc._cython import cygrpc

    library = open(cygrpc.__file__, "rb").read()
    for name, _ in server_options(LIMITS, MB):
        assert name.encode() in library, name


def test_rapid_reset_runs_no_inference_and_leaves_everyone_served(served):
    """CVE-2023-44487: streams opened and reset at once, by the thousand, on one connection."""
    rss, rows_before = served.rss(), sum(served.rows)
    attacker = h2raw.Connection(served.grpc)
    message, streams, sent = infer_message(), 20_000, 0
    cancel = h2raw.CANCEL.to_bytes(4, "big")
    started = time.monotonic()
    while sent < streams and time.monotonic() - started < 5:
        chunk = b"".join(
            h2raw.call_frames(stream, message) + h2raw.frame(h2raw.RST_STREAM, 0, stream, cancel)
            for stream in range(2 * sent + 1, 2 * (sent + 200) + 1, 2)
        )
        if not attacker.send(chunk):
            break
        sent += 200
    attacker.close()
    time.sleep(0.5)
    inferred = sum(served.rows) - rows_before
    assert inferred < sent / 10, f"{inferred} of {sent} reset calls were inferred"
    served.assert_unharmed(rss)


def test_oversized_pings_close_the_connection(served):
    rss = served.rss()
    attacker = h2raw.Connection(served.grpc, drain=False)
    ping = h2raw.frame(h2raw.PING, 0, 0, b"p" * MB)
    for _ in range(20):
        if not attacker.send(ping):
            break
    assert attacker.send(ping) is False or _eof(attacker), "a 1 MB PING was taken"
    attacker.close()
    served.assert_unharmed(rss)


@pytest.mark.slow  # the fast loop (-m 'not slow') leaves it to CI
def test_a_ping_flood_from_a_client_that_never_reads_is_bounded(served):
    rss = served.rss()
    attacker = h2raw.Connection(served.grpc, drain=False)
    burst = h2raw.frame(h2raw.PING, 0, 0, b"12345678") * 10_000
    started = time.monotonic()
    while time.monotonic() - started < 3 and attacker.send(burst):
        pass
    served.assert_unharmed(rss)
    attacker.close()


def test_window_updates_to_parked_answers_do_not_stall_the_server(served):
    """Answers parked behind a zero window, then a flood of WINDOW_UPDATE frames."""
    rss = served.rss()
    attacker = h2raw.Connection(served.grpc, first=h2raw.settings(initial_window_size=0))
    message = infer_message()
    attacker.send(b"".join(h2raw.call_frames(2 * k + 1, message) for k in range(100)))
    time.sleep(0.5)
    update = h2raw.frame(h2raw.WINDOW_UPDATE, 0, 0, (1).to_bytes(4, "big"))
    slowest = []
    flood = threading.Thread(
        target=lambda: [attacker.send(update * 10_000) for _ in range(10)], daemon=True
    )
    flood.start()
    while flood.is_alive():
        slowest.append(served.health_seconds())
    flood.join()
    assert max(slowest, default=0) < 1.0, f"health took {max(slowest):.2f} s during the flood"
    attacker.close()
    served.assert_unharmed(rss)


def test_endless_empty_continuation_frames_end_the_connection(served):
    rss = served.rss()
    attacker = h2raw.Connection(served.grpc)
    attacker.send(h2raw.frame(h2raw.HEADERS, 0, 1, h2raw.request_headers()))
    empty = h2raw.frame(h2raw.CONTINUATION, 0, 1) * 10_000
    started = time.monotonic()
    while time.monotonic() - started < 5 and attacker.send(empty):
        if attacker.closed.is_set() or attacker.goaway():
            break
    assert attacker.wait_closed(2.0), "the server kept taking empty CONTINUATION frames"
    attacker.close()
    served.assert_unharmed(rss)


def test_huge_header_blocks_of_indexed_fields_are_refused(served):
    """40 header blocks of 1 MB: each stream is answered with an error and reset, before its
    fields are kept (the metadata limits), or the connection is closed."""
    rss = served.rss()
    attacker = h2raw.Connection(served.grpc)
    block = b"\x82" * (16 * 2**10)  # ":method: GET", again and again
    for k in range(40):
        stream = 2 * k + 1
        frames = h2raw.frame(h2raw.HEADERS, 0, stream, block)
        frames += h2raw.frame(h2raw.CONTINUATION, 0, stream, block) * 62
        frames += h2raw.frame(h2raw.CONTINUATION, h2raw.END_HEADERS, stream, block)
        if not attacker.send(frames):
            break
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline and len(_refused(attacker)) < 40:
        time.sleep(0.02)
    refused = _refused(attacker)
    assert attacker.closed.is_set() or len(refused) == 40, f"{len(refused)} of 40 refused"
    attacker.close()
    served.assert_unharmed(rss)


def _refused(connection: h2raw.Connection) -> set[int]:
    """The streams the server has reset (RST_STREAM)."""
    return {stream for kind, _, stream, _ in connection.frames if kind == h2raw.RST_STREAM}


@pytest.mark.slow  # the fast loop (-m 'not slow') leaves it to CI
def test_idle_connections_beyond_the_cap_are_refused_then_closed(served):
    """Twice the gRPC cap of connections that send nothing, only the preface, or the preface
    and SETTINGS: HTTP is not starved (its cap is its own), and once the handshake and idle
    timeouts have passed, gRPC serves again."""
    import socket

    rss = served.rss()
    host, port = served.grpc.rsplit(":", 1)
    silent = [
        socket.create_connection((host, int(port))) for _ in range(LIMITS.grpc_max_connections)
    ]
    preface = [
        h2raw.Connection(served.grpc, first=b"" if k % 2 else None)
        for k in range(LIMITS.grpc_max_connections)
    ]
    assert served.health_seconds() < 1.0
    time.sleep(max(LIMITS.header_timeout_s, LIMITS.grpc_idle_s) + 1.5)
    assert all(c.closed.is_set() or c.goaway() for c in preface)
    served.assert_unharmed(rss)
    for connection in [*silent, *preface]:
        connection.close()


@pytest.mark.parametrize(
    "frames",
    [
        pytest.param(h2raw.frame(h2raw.WINDOW_UPDATE, 0, 0, bytes(4)), id="WINDOW_UPDATE 0"),
        pytest.param(h2raw.frame(h2raw.PING, 0, 0, b"1234567"), id="PING of 7 bytes"),
        pytest.param(h2raw.frame(h2raw.PING, 0, 0, b"123456789"), id="PING of 9 bytes"),
        pytest.param(h2raw.settings(max_frame_size=0), id="MAX_FRAME_SIZE 0"),
    ],
)
def test_protocol_errors_end_the_connection(served, frames):
    """RFC 9113 connection errors: the server says so (GOAWAY) or closes, well before the
    idle timeout would."""
    attacker = h2raw.Connection(served.grpc)
    attacker.settle()
    attacker.send(frames)
    assert attacker.wait_closed(LIMITS.grpc_idle_s / 2), [kind for kind, *_ in attacker.frames]
    attacker.close()
    assert served.health_seconds() < 1.0


@pytest.mark.parametrize(
    "frames",
    [
        pytest.param(h2raw.frame(h2raw.DATA, 0, 0, b"x"), id="DATA on stream 0"),
        pytest.param(h2raw.frame(h2raw.HEADERS, h2raw.PADDED, 1), id="empty PADDED HEADERS"),
    ],
)
def test_malformed_frames_that_grpc_core_drops_leave_the_connection_sound(served, frames):
    """Frames gRPC core drops instead of ending the connection (RFC 9113 would end it): no
    crash, and a call on the same connection right after is answered."""
    attacker = h2raw.Connection(served.grpc)
    attacker.settle()
    attacker.send(frames + h2raw.call_frames(3, infer_message()))
    deadline = time.monotonic() + 1.0
    answered = False
    while time.monotonic() < deadline and not answered:
        answered = any(k == h2raw.HEADERS and stream == 3 for k, _, stream, _ in attacker.frames)
        time.sleep(0.02)
    closed = attacker.closed.is_set() or attacker.goaway()
    assert answered or closed, [kind for kind, *_ in attacker.frames]
    attacker.close()
    assert served.health_seconds() < 1.0


def _eof(connection: h2raw.Connection) -> bool:
    """Whether the server closed the connection: reads reach the end within 2 s."""
    connection.sock.settimeout(2)
    try:
        while connection.sock.recv(1 << 16):
            pass
        return True
    except OSError as exc:
        return not isinstance(exc, TimeoutError)


def test_connections_at_the_cap_are_logged_since_grpc_core_refuses_silently():
    """gRPC core refuses connections beyond its cap without a word: the watcher says so."""
    import asyncio
    import logging
    import socket

    from cifar_deploy.serving.grpc_server import watch_connection_cap
    from cifar_deploy.serving.limits import log

    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(3)]
    accepted = [listener.accept()[0] for _ in clients]

    async def watch(cap: int) -> None:
        try:
            await asyncio.wait_for(watch_connection_cap(port, cap, every_s=0.05), 0.5)
        except asyncio.TimeoutError:
            pass

    log.addHandler(handler)
    try:
        asyncio.run(watch(cap=4))
        assert not records  # below the cap: nothing to say
        asyncio.run(watch(cap=3))
    finally:
        log.removeHandler(handler)
        for sock in [*clients, *accepted, listener]:
            sock.close()
    lines = [r.getMessage() for r in records]
    assert len(lines) == 1 and "3 connections are open" in lines[0]
    assert "--grpc-max-connections 3" in lines[0]
