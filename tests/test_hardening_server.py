"""Specification of the server's resource limits (issue #14, part 1): connections that send
nothing are closed, connections beyond the limit are refused with a JSON 503 and the file
descriptors stay free, stalled uploads time out and cannot pin memory across requests, image
bombs are refused from their header, and metrics labels stay bounded whatever paths are asked."""

from __future__ import annotations

import io
import json
import logging
import socket
import subprocess
import sys
import time

import pytest
import requests
from PIL import Image

from cifar_deploy.serving.limits import RateLimitedLog, ServerLimits
from tests.helpers import REPO, serving

FAST = ServerLimits(header_timeout_s=0.5, body_timeout_s=0.5, max_connections=8)


@pytest.fixture(scope="module")
def app(tiny_onnx):
    from cifar_deploy.runtime import load_predictor
    from cifar_deploy.serving.server import build_server_app

    return build_server_app(
        load_predictor(tiny_onnx), "cnn", max_queue_delay_ms=1, max_payload_bytes=2**20, limits=FAST
    )


@pytest.fixture(scope="module")
def server(app):
    with serving(app, FAST) as address:
        yield address


def connect(address: str) -> socket.socket:
    host, port = address.split(":")
    return socket.create_connection((host, int(port)), timeout=10)


def read_all(conn: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (or 10 s pass)."""
    chunks = []
    while chunk := conn.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def test_a_connection_that_sends_nothing_is_closed_after_the_head_timeout(server):
    with connect(server) as conn:
        started = time.monotonic()
        assert read_all(conn) == b""  # closed by the server, nothing sent
        assert time.monotonic() - started < 5  # the 0.5 s limit, with room for a slow machine


def test_a_request_head_that_stalls_halfway_is_closed(server):
    with connect(server) as conn:
        conn.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n")  # no blank line: stalls
        assert read_all(conn) == b""


def test_an_idle_connection_between_requests_is_closed_too(server):
    with connect(server) as conn:
        conn.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        reply = read_all(conn)  # the answer, then the close when the next head never comes
    assert reply.startswith(b"HTTP/1.1 200") and b'"live":true' in reply.replace(b" ", b"")


def test_a_request_head_over_the_limit_gets_431_and_is_closed_before_it_grows(tiny_onnx):
    """A header line sent in pieces, beyond the head limit and well within the head timeout:
    the parser would keep it all (at a cost that grows with it); it is refused once the limit
    is passed, without waiting for the rest."""
    from cifar_deploy.runtime import load_predictor
    from cifar_deploy.serving.server import build_server_app

    patient = ServerLimits(header_timeout_s=30, max_connections=8)
    app = build_server_app(load_predictor(tiny_onnx), "cnn", limits=patient)
    piece = b"a" * (patient.max_head_bytes * 3 // 4)
    with serving(app, patient) as server, connect(server) as conn:
        conn.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nX-Long: " + piece)
        time.sleep(0.2)  # two reads: the head is incomplete after each
        conn.sendall(piece)
        started = time.monotonic()
        reply = read_all(conn)
    assert reply.startswith(b"HTTP/1.1 431"), reply[:100]
    assert b"request head exceeds 65,536 bytes" in reply
    assert time.monotonic() - started < 5  # refused at once, not at the 30 s head timeout


def test_a_large_head_within_the_limit_and_a_large_body_are_still_served(server):
    """The head count stops when the head is complete: a body in the same reads is not
    counted as head."""
    headers = "".join(f"X-Pad-{k}: {'b' * 900}\r\n" for k in range(40))  # ~37 KB of head
    answer = requests.get(
        f"http://{server}/v2/health/live",
        headers=dict(line.split(": ", 1) for line in headers.strip().split("\r\n")),
        timeout=10,
    )
    assert answer.status_code == 200
    body = {"inputs": [{"name": "images", "datatype": "UINT8", "shape": [8, 32, 32, 3],
                        "data": [7] * (8 * 3072)}]}  # fmt: skip
    answer = requests.post(f"http://{server}/v2/models/cnn/infer", json=body, timeout=30)
    assert answer.status_code == 200


def test_connections_beyond_the_limit_get_a_json_503_and_are_closed(server):
    held = [connect(server) for _ in range(FAST.max_connections)]
    time.sleep(0.1)  # let the server accept them all
    try:
        with connect(server) as extra:
            head, _, body = read_all(extra).partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 503"), head
        assert "open connections" in json.loads(body)["error"]
    finally:
        for conn in held:
            conn.close()
    deadline = time.monotonic() + 10  # the server notices the closes, then serves again
    while time.monotonic() < deadline:
        try:
            if requests.get(f"http://{server}/v2/health/live", timeout=5).status_code == 200:
                break
        except requests.ConnectionError:
            pass
        time.sleep(0.1)
    else:
        pytest.fail("the server did not serve again after the held connections closed")


def test_a_body_that_stops_arriving_gets_408(server):
    with connect(server) as conn:
        conn.sendall(
            b"POST /v2/models/cnn/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n{"
        )
        head, _, body = read_all(conn).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408"), head
    assert "did not arrive within 0.5 s" in json.loads(body)["error"]


def test_bytes_held_by_stalled_uploads_are_capped_across_requests(tiny_onnx):
    from cifar_deploy.runtime import load_predictor
    from cifar_deploy.serving.server import build_server_app

    limits = ServerLimits(body_timeout_s=5, max_buffered_bytes=300_000)
    app = build_server_app(load_predictor(tiny_onnx), "cnn", max_payload_bytes=2**20, limits=limits)
    head = b"POST /v2/models/cnn/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n"
    budget = app.state.repository.body
    with serving(app, limits) as address:
        first = connect(address)
        first.sendall(head + b" " * 200_000)  # 200 KB held, 800 KB still to come
        time.sleep(0.5)
        assert budget.buffered == 200_000
        with connect(address) as second:
            second.sendall(head + b" " * 200_000)  # would hold 400 KB in all: over the cap
            try:
                reply = read_all(second)
            except ConnectionResetError:  # closed with the rest of our body unread
                reply = b""
            held_meanwhile = budget.buffered
        first.close()
    assert held_meanwhile <= limits.max_buffered_bytes
    if reply:  # the 503 arrived before the close (it may not: the kernel resets instead)
        status, _, body = reply.partition(b"\r\n\r\n")
        assert status.startswith(b"HTTP/1.1 503"), status
        assert "partly received request bodies" in json.loads(body)["error"]


def bomb_jpeg(width: int = 12_000, height: int = 12_000) -> bytes:
    """A few-KB JPEG whose header declares ``width`` x ``height`` (the frame header patched)."""
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 30, 30)).save(buffer, "JPEG")
    data = bytearray(buffer.getvalue())
    sof = data.index(b"\xff\xc0")  # baseline frame header: length(2) precision(1) height width
    data[sof + 5 : sof + 9] = height.to_bytes(2, "big") + width.to_bytes(2, "big")
    return bytes(data)


def test_an_image_bomb_is_refused_with_413_from_its_header(server):
    reply = requests.post(f"http://{server}/v1/classify", data=bomb_jpeg(), timeout=30)
    assert reply.status_code == 413
    assert "12000 x 12000" in reply.json()["error"]
    health = requests.get(f"http://{server}/v2/health/ready", timeout=5)
    assert health.status_code == 200


def test_refusing_an_image_bomb_keeps_memory_flat(tmp_path):
    """Peak memory of a fresh process before and after decoding the bomb: without the header
    check, Pillow allocates 12000 x 12000 x 3 bytes (432 MB) before it finds the data short."""
    bomb = tmp_path / "bomb.jpg"
    bomb.write_bytes(bomb_jpeg())
    script = (
        "import resource, sys\n"
        "from cifar_deploy.serving.images import decode_image\n"
        "from cifar_deploy.errors import RequestError\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "try:\n"
        "    decode_image(open(sys.argv[1], 'rb').read())\n"
        "except RequestError as exc:\n"
        "    print(exc.status)\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script, str(bomb)], capture_output=True, text=True, cwd=REPO
    )
    status, grown_kb = out.stdout.split()
    assert status == "413", out.stderr
    assert int(grown_kb) < 20_000  # KB; the decode would take over 400,000


def deep_png(side: int = 4096) -> bytes:
    """A 16-bit RGBA PNG of ``side`` x ``side`` zero pixels: about 130 KB of file within the
    pixel limit, 128 MiB once decoded."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", side, side, 16, 6, 0, 0, 0)  # 16-bit RGBA
    packer, row = zlib.compressobj(9), bytes(1 + side * 8)
    data = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")
    )


def test_an_image_within_the_pixel_limit_but_deep_is_refused_by_its_decoded_bytes(server):
    png = deep_png()
    assert len(png) < 200_000
    reply = requests.post(f"http://{server}/v1/classify", data=png, timeout=30)
    assert reply.status_code == 413
    assert "decodes to 112 MiB (4096 x 4096 RGBA); the limit is 64 MiB" in reply.json()["error"]


def test_predict_reports_an_image_bomb_in_one_line_and_classifies_the_rest(tiny_onnx, tmp_path):
    from cifar_deploy.checks.predict import classify_files
    from cifar_deploy.runtime import load_predictor

    bomb, fine = tmp_path / "bomb.jpg", tmp_path / "fine.png"
    bomb.write_bytes(bomb_jpeg())
    Image.new("RGB", (40, 30), (10, 200, 10)).save(fine)
    results = classify_files(load_predictor(tiny_onnx), [bomb, fine], 3)
    assert "limit is 16,777,216 pixels" in results[0]["error"]
    assert results[1]["error"] is None and len(results[1]["predictions"]) == 3


def test_metrics_labels_stay_bounded_whatever_paths_are_asked(app, server):
    session = requests.Session()
    for i in range(300):
        session.get(f"http://{server}/no/such/path/{i}", timeout=5)
        session.get(f"http://{server}/v2/models/cnn/versions/{i}/nonsense", timeout=5)
        session.post(f"http://{server}/v2/models/model-{i}/infer", data=b"{}", timeout=5)
    text = session.get(f"http://{server}/metrics", timeout=5).text
    assert "/no/such/path" not in text and "nonsense" not in text and "model-" not in text
    assert 'endpoint="unmatched"' in text
    assert len(text) < 40_000  # bytes: one label set per route template, not per path
    assert len(app._children) < 40  # and one kept entry per label set, not per name asked


def test_repeated_event_loop_errors_are_one_line_a_second(caplog):
    limited = RateLimitedLog(logging.getLogger("test.limits"), interval=60)
    with caplog.at_level(logging.WARNING, logger="test.limits"):
        for _ in range(1000):
            limited.warning("socket.accept() out of system resource")
    assert len(caplog.records) == 1
