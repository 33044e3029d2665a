"""A raw HTTP/2 client for the gRPC attack tests: frames a client library never lets a test
send (resets by the thousand, oversized PINGs, endless CONTINUATION), written to a plain socket.

Header blocks use HPACK's "literal without indexing, new name" form (RFC 7541 6.2.2), or raw
bytes where a test wants indexed fields.
"""

from __future__ import annotations

import socket
import struct
import threading
import time

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY = range(8)
WINDOW_UPDATE, CONTINUATION = 8, 9
END_STREAM, ACK, END_HEADERS, PADDED = 0x1, 0x1, 0x4, 0x8
SETTINGS_INITIAL_WINDOW_SIZE, SETTINGS_MAX_FRAME_SIZE = 0x4, 0x5
CANCEL = 0x8
INFER_PATH = b"/inference.GRPCInferenceService/ModelInfer"


def frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    """One frame: 24-bit length, type, flags, 31-bit stream id, payload (RFC 9113 4.1)."""
    return (
        struct.pack(">I", len(payload))[1:]
        + bytes([kind, flags])
        + struct.pack(">I", stream)
        + payload
    )


def settings(**values: int) -> bytes:
    ids = {
        "initial_window_size": SETTINGS_INITIAL_WINDOW_SIZE,
        "max_frame_size": SETTINGS_MAX_FRAME_SIZE,
    }
    payload = b"".join(struct.pack(">HI", ids[k], v) for k, v in values.items())
    return frame(SETTINGS, 0, 0, payload)


def literal(name: bytes, value: bytes) -> bytes:
    assert len(name) < 127 and len(value) < 127
    return b"\x00" + bytes([len(name)]) + name + bytes([len(value)]) + value


def request_headers(path: bytes = INFER_PATH) -> bytes:
    """The header block of a unary gRPC call."""
    fields = [
        (b":method", b"POST"),
        (b":scheme", b"http"),
        (b":path", path),
        (b":authority", b"localhost"),
        (b"content-type", b"application/grpc"),
        (b"te", b"trailers"),
    ]
    return b"".join(literal(n, v) for n, v in fields)


def grpc_message(message: bytes) -> bytes:
    """A length-prefixed gRPC message, uncompressed."""
    return b"\x00" + struct.pack(">I", len(message)) + message


def call_frames(stream: int, message: bytes) -> bytes:
    """HEADERS and one DATA frame ending the stream: a whole unary call."""
    return frame(HEADERS, END_HEADERS, stream, request_headers()) + frame(
        DATA, END_STREAM, stream, grpc_message(message)
    )


class Connection:
    """A cleartext HTTP/2 connection that has sent its preface and SETTINGS. With ``drain``,
    a thread reads (and keeps) every frame the server sends; without, nothing is read."""

    def __init__(self, address: str, drain: bool = True, first: bytes | None = None):
        host, port = address.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=10)
        self.frames: list[tuple[int, int, int, bytes]] = []
        self.closed = threading.Event()
        self.sock.sendall(PREFACE + (first if first is not None else settings()))
        if drain:
            threading.Thread(target=self._read, daemon=True).start()

    def send(self, data: bytes) -> bool:
        """Write ``data``; False once the server has closed the connection."""
        try:
            self.sock.sendall(data)
            return True
        except OSError:
            self.closed.set()
            return False

    def _read(self) -> None:
        buffer = b""
        try:
            while True:
                chunk = self.sock.recv(1 << 16)
                if not chunk:
                    break
                buffer += chunk
                while len(buffer) >= 9:
                    length = int.from_bytes(buffer[:3], "big")
                    if len(buffer) < 9 + length:
                        break
                    kind, flags = buffer[3], buffer[4]
                    stream = int.from_bytes(buffer[5:9], "big") & 0x7FFFFFFF
                    payload = buffer[9 : 9 + length]
                    buffer = buffer[9 + length :]
                    self.frames.append((kind, flags, stream, payload[:64]))
        except OSError:
            pass
        finally:
            self.closed.set()

    def settle(self, seconds: float = 2.0) -> None:
        """Finish the handshake: wait for the server's SETTINGS and acknowledge them (gRPC core
        reads some frames differently before that)."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if any(kind == SETTINGS and not flags & ACK for kind, flags, *_ in self.frames):
                self.send(frame(SETTINGS, ACK, 0))
                time.sleep(0.1)
                return
            time.sleep(0.01)
        raise AssertionError("the server sent no SETTINGS")

    def goaway(self) -> bool:
        return any(f[0] == GOAWAY for f in self.frames)

    def wait_closed(self, seconds: float) -> bool:
        """Whether the server ends the connection (closes it, or sends GOAWAY) in time."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.closed.is_set() or self.goaway():
                return True
            time.sleep(0.02)
        return False

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass
