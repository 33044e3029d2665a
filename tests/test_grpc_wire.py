"""Specification of the HTTP/2 carrier for unary gRPC calls (`serving/grpc_wire.py`), driven by
grpcio's own client (a different implementation than the server's) and, for the frames a client
library does not let a test choose, by a raw socket."""

from __future__ import annotations

import asyncio
import socket
import struct
import threading

import grpc
import pytest

from cifar_deploy.serving.grpc_wire import (
    PREFACE,
    GrpcError,
    GrpcServer,
    frame,
    percent_encode,
)

ECHO = "/test.Echo/Echo"


async def echo(data: bytes) -> bytes:
    return data


async def fail(data: bytes) -> bytes:
    raise GrpcError(3, data.decode())


async def slow(data: bytes) -> bytes:
    await asyncio.sleep(0.3)
    return data


class Running:
    """A GrpcServer on its own event loop in a thread."""

    def __init__(self, max_message_bytes: int = 8 * 2**20):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        methods = {ECHO: echo, "/test.Echo/Fail": fail, "/test.Echo/Slow": slow}
        self.server = self.run(GrpcServer(methods, max_message_bytes).start("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.server.bound_port}"

    def run(self, coroutine, timeout: float = 30):
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def close(self):
        self.run(self.server.stop(grace=5))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture(scope="module")
def server():
    running = Running()
    yield running
    running.close()


def call(address: str, method: str, data: bytes, **kwargs) -> bytes:
    with grpc.insecure_channel(address, **kwargs.pop("channel", {})) as channel:
        return channel.unary_unary(method)(data, timeout=30, **kwargs)


def test_a_unary_call_gets_its_answer(server):
    assert call(server.address, ECHO, b"hello") == b"hello"


def test_messages_larger_than_every_flow_control_window_go_both_ways(server):
    # 6 MiB: beyond the 4 MiB receive window the server announces (so it must send
    # WINDOW_UPDATEs) and beyond the 64 KiB window the client starts with (so the answer must
    # wait for the client's).
    big = bytes(range(256)) * (6 * 2**12)
    options = [("grpc.max_receive_message_length", 16 * 2**20)]  # grpcio's default is 4 MiB
    assert call(server.address, ECHO, big, channel={"options": options}) == big


def test_gzip_compressed_requests_are_accepted(server):
    data = b"pixels " * 1000
    assert call(server.address, ECHO, data, compression=grpc.Compression.Gzip) == data


def test_an_unknown_method_is_unimplemented_with_its_name(server):
    with pytest.raises(grpc.RpcError) as info:
        call(server.address, "/test.Echo/Nope", b"")
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert info.value.details() == "unknown method /test.Echo/Nope"


def test_a_method_error_reaches_the_client_with_its_code_and_message(server):
    message = "expected shape [N, 32, 32, 3], received [1, 16] — 100% wrong"
    with pytest.raises(grpc.RpcError) as info:
        call(server.address, "/test.Echo/Fail", message.encode())
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details() == message  # percent-encoded on the wire, decoded by grpcio


def test_a_message_over_the_limit_is_resource_exhausted():
    running = Running(max_message_bytes=1000)
    try:
        with pytest.raises(grpc.RpcError) as info:
            call(running.address, ECHO, b"x" * 5000)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "payload exceeds the limit of 1,000 bytes" in info.value.details()
        assert call(running.address, ECHO, b"x" * 900) == b"x" * 900  # the server goes on
    finally:
        running.close()


def test_stop_lets_a_call_in_progress_finish():
    running = Running()
    result = {}

    def client():
        result["answer"] = call(running.address, "/test.Echo/Slow", b"late")

    thread = threading.Thread(target=client)
    thread.start()
    deadline = 50
    while running.server.calls == 0 and deadline:  # the call has reached the method
        threading.Event().wait(0.02)
        deadline -= 1
    running.close()
    thread.join(10)
    assert result == {"answer": b"late"}


def read_frames(sock: socket.socket, want: int) -> list[tuple[int, int, int, bytes]]:
    """Frames from the server until one of type ``want`` (or the connection ends)."""
    frames, buffer = [], b""
    sock.settimeout(10)
    while True:
        while len(buffer) < 9 or len(buffer) < 9 + int.from_bytes(buffer[:3], "big"):
            chunk = sock.recv(65536)
            if not chunk:
                return frames
            buffer += chunk
        length = int.from_bytes(buffer[:3], "big")
        kind, flags = buffer[3], buffer[4]
        stream = int.from_bytes(buffer[5:9], "big")
        frames.append((kind, flags, stream, buffer[9 : 9 + length]))
        buffer = buffer[9 + length :]
        if kind == want:
            return frames


def test_a_ping_is_answered_with_the_same_payload(server):
    host, port = server.address.split(":")
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(PREFACE + frame(4, 0, 0) + frame(6, 0, 0, b"12345678"))
        frames = read_frames(sock, want=6)
    assert frames[-1] == (6, 1, 0, b"12345678")  # PING with ACK, same opaque data
    assert frames[0][0] == 4  # the server's own SETTINGS come first


def test_a_connection_that_is_not_http2_is_closed(server):
    host, port = server.address.split(":")
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        frames = read_frames(sock, want=-1)  # until the server closes
    assert [f[0] for f in frames] == [4, 8]  # its SETTINGS and WINDOW_UPDATE, then nothing


def test_grpc_message_is_percent_encoded_as_the_spec_asks():
    assert percent_encode("ok 100%") == b"ok 100%25"
    assert percent_encode("é\n") == b"%C3%A9%0A"


def test_the_frame_header_is_length_type_flags_stream():
    assert frame(0, 1, 3, b"abc") == b"\x00\x00\x03" + b"\x00\x01" + struct.pack(">I", 3) + b"abc"
