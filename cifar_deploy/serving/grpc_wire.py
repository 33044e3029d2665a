"""gRPC's wire protocol for unary calls over cleartext HTTP/2 (h2c), on the asyncio event loop.

This is what ``serve --grpc-port`` listens with. It takes a table of methods
(``"/package.Service/Method" -> async (request bytes) -> response bytes``) and carries their
calls: the HTTP/2 connection preface and SETTINGS, HPACK header blocks (the ``hpack`` package,
with a shortcut for blocks made only of indexed fields, which is what clients send once their
first request has filled the dynamic table), flow control in both directions, PING, RST_STREAM
and GOAWAY; gRPC's length-prefixed messages (identity, gzip or deflate), its status codes and
``grpc-message`` in trailers. The answers finished in one turn of the loop leave in one write.
Streaming calls, TLS and ``grpc-timeout`` are not supported (a deadline the client sets is
enforced by the client).

Why not ``grpc.aio``: on a 2-core AMD EPYC (AVX2) under perf_analyzer at concurrency 8, with
constant answers (``benchmarks/grpc_carriers.py``), grpcio's asyncio server costs 0.50 ms of CPU
per call on uvloop (0.56 on asyncio's own loop; its thread-pool server 0.55), this carrier 0.11.
That is more than this project's whole HTTP path with validation and batching (0.27 ms); with
this carrier the whole gRPC path costs 0.21 ms (``benchmarks/serve_frontend.py --protocol
grpc``). With inference at about 5 ms of CPU per image, that difference decided whether gRPC
beat Triton's C++ front end (``benchmarks/serve_peers.py --protocol grpc``).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
# Frame types (RFC 9113, section 6).
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY = range(8)
WINDOW_UPDATE, CONTINUATION = 8, 9
# Flags.
END_STREAM, ACK, END_HEADERS, PADDED, PRIORITY_FLAG = 0x1, 0x1, 0x4, 0x8, 0x20
# SETTINGS identifiers.
HEADER_TABLE_SIZE, MAX_CONCURRENT_STREAMS, INITIAL_WINDOW_SIZE, MAX_FRAME_SIZE = 1, 3, 4, 5
# HTTP/2 error codes.
NO_ERROR, PROTOCOL_ERROR, FLOW_CONTROL_ERROR, FRAME_SIZE_ERROR, COMPRESSION_ERROR = 0, 1, 3, 6, 9

# gRPC status codes.
OK, INVALID_ARGUMENT, NOT_FOUND, RESOURCE_EXHAUSTED = 0, 3, 5, 8
UNIMPLEMENTED, INTERNAL, UNAVAILABLE = 12, 13, 14
CODE_NAMES = {
    OK: "OK",
    INVALID_ARGUMENT: "INVALID_ARGUMENT",
    NOT_FOUND: "NOT_FOUND",
    RESOURCE_EXHAUSTED: "RESOURCE_EXHAUSTED",
    UNIMPLEMENTED: "UNIMPLEMENTED",
    INTERNAL: "INTERNAL",
    UNAVAILABLE: "UNAVAILABLE",
}

DEFAULT_WINDOW = 65_535  # every HTTP/2 flow-control window starts here
RECEIVE_WINDOW = 1 << 22  # bytes a client may send ahead of our WINDOW_UPDATEs (per stream)
MAX_FRAME = 1 << 20  # the largest frame a client may send us
MAX_STREAMS = 1000  # concurrent calls per connection
MAX_HEADER_BLOCK = 1 << 16  # bytes of one compressed header block (gRPC's are ~100-300)
PREFACE_TIMEOUT_S = 10.0  # a connection that sends no preface by then is closed

Method = Callable[[bytes], Awaitable[bytes]]


class GrpcError(Exception):
    """A call that ends with a gRPC status other than OK."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code, self.message = code, message


def frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return (
        struct.pack(">I", len(payload))[1:]
        + bytes((kind, flags))
        + stream.to_bytes(4, "big")
        + payload
    )


def _hpack_int(value: int, prefix_bits: int, first: int = 0) -> bytes:
    """HPACK's integer with a ``prefix_bits`` prefix (RFC 7541, 5.1)."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((first | value,))
    out, value = bytearray((first | limit,)), value - limit
    while value >= 128:
        out.append(value % 128 + 128)
        value //= 128
    out.append(value)
    return bytes(out)


def literal(name: bytes, value: bytes) -> bytes:
    """A header field as a literal that is not indexed: it leaves both HPACK tables as they
    are, so responses need no encoder state."""
    return b"\x00" + _hpack_int(len(name), 7) + name + _hpack_int(len(value), 7) + value


def percent_encode(message: str) -> bytes:
    """``grpc-message``'s encoding: printable ASCII other than '%' as is, the rest as %XX."""
    return b"".join(
        bytes((b,)) if 0x20 <= b <= 0x7E and b != 0x25 else b"%%%02X" % b for b in message.encode()
    )


# ":status: 200" (static table entry 8) and "content-type: application/grpc".
RESPONSE_HEAD = b"\x88" + literal(b"content-type", b"application/grpc")
TRAILERS_OK = literal(b"grpc-status", b"0")


def trailers(code: int, message: str) -> bytes:
    block = literal(b"grpc-status", str(code).encode())
    return block + literal(b"grpc-message", percent_encode(message)) if message else block


@dataclass(eq=False)
class _Stream:
    id: int
    send_window: int
    block: bytearray = field(default_factory=bytearray)  # header block until END_HEADERS
    headers: dict | None = None
    method: Method | None = None  # what its :path names, once the headers are checked
    body: bytearray = field(default_factory=bytearray)
    unacked: int = 0  # received bytes not yet returned to the client by WINDOW_UPDATE
    refused: bool = False  # complete or answered already: its further DATA is dropped
    cancelled: bool = False  # reset by the client: its answer is not sent
    pending: bytes = b""  # DATA waiting for flow-control window, then ``after`` (trailers)
    after: bytes = b""


class GrpcServer:
    """The listening side: ``await GrpcServer(methods, ...).start(host, port)``; ``bound_port``
    says which port it got; ``await stop(grace)`` sends GOAWAY and lets calls finish."""

    def __init__(self, methods: dict[str, Method], max_message_bytes: int, budget=None):
        self.methods = methods
        self.max_message = max_message_bytes
        self.budget = budget  # a BodyBudget: bytes of partly received messages, all connections
        self.connections: set[_Connection] = set()
        self.calls = 0  # calls whose answer is not yet written
        self._server: asyncio.AbstractServer | None = None
        self.bound_port = 0

    async def start(self, host: str, port: int, sock: socket.socket | None = None) -> GrpcServer:
        """Listen on ``host:port``, or serve ``sock``, a socket already listening."""
        loop = asyncio.get_running_loop()
        if sock is not None:
            self._server = await loop.create_server(lambda: _Connection(self), sock=sock)
        else:
            self._server = await loop.create_server(lambda: _Connection(self), host, port)
        self.bound_port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self, grace: float = 30.0) -> None:
        if self._server is None:
            return
        self._server.close()
        for connection in list(self.connections):
            connection.go_away()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        while self.calls and loop.time() < deadline:
            await asyncio.sleep(0.01)
        for connection in list(self.connections):
            connection.close()
        await self._server.wait_closed()
        self._server = None


class _Connection(asyncio.Protocol):
    def __init__(self, server: GrpcServer):
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.preface_seen = False
        self.streams: dict[int, _Stream] = {}
        self.decoder = None
        self.last_stream = 0
        self.send_window = DEFAULT_WINDOW  # connection-level, for our DATA
        self.peer_initial_window = DEFAULT_WINDOW
        self.peer_max_frame = 16_384
        self.unacked = 0  # connection-level received bytes not yet returned
        self.held = 0  # bytes of partly received messages counted in the server's budget
        self.outgoing: list[bytes] = []  # answers waiting for this turn of the loop to end
        self.closing = False
        self.continuing: _Stream | None = None  # a header block continues in CONTINUATION
        self.continuing_end = 0  # that block's HEADERS frame had END_STREAM
        self._preface_timer: asyncio.TimerHandle | None = None

    # -- connection life ---------------------------------------------------------------------

    def connection_made(self, transport) -> None:
        import hpack

        self.transport = transport
        self.server.connections.add(self)
        self.decoder = hpack.Decoder()
        settings = struct.pack(
            ">HIHIHI",
            *(MAX_CONCURRENT_STREAMS, MAX_STREAMS),
            *(INITIAL_WINDOW_SIZE, RECEIVE_WINDOW),
            *(MAX_FRAME_SIZE, MAX_FRAME),
        )
        raise_window = struct.pack(">I", RECEIVE_WINDOW - DEFAULT_WINDOW)
        self._out(frame(SETTINGS, 0, 0, settings) + frame(WINDOW_UPDATE, 0, 0, raise_window))
        loop = asyncio.get_running_loop()
        self._preface_timer = loop.call_later(PREFACE_TIMEOUT_S, self._no_preface)

    def _no_preface(self) -> None:
        if not self.preface_seen:
            self.close()

    def connection_lost(self, exc) -> None:
        self.server.connections.discard(self)
        self._release(self.held)
        self.streams.clear()
        if self._preface_timer is not None:
            self._preface_timer.cancel()

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self._flush()
            self.transport.close()

    def go_away(self, error: int = NO_ERROR) -> None:
        """No new calls on this connection; those already started are answered."""
        if self.closing or self.transport is None or self.transport.is_closing():
            return
        self.closing = True
        payload = struct.pack(">II", self.last_stream, error)
        self._out(frame(GOAWAY, 0, 0, payload))
        if error != NO_ERROR or not self.streams:
            self.close()

    def _fail(self, error: int) -> None:
        self.go_away(error)
        self.close()

    # -- reading frames ----------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if not self.preface_seen:
            if len(self.buffer) < len(PREFACE):
                if not PREFACE.startswith(bytes(self.buffer)):
                    self.close()  # not HTTP/2 with prior knowledge (plain HTTP/1.1, TLS...)
                return
            if self.buffer[: len(PREFACE)] != PREFACE:
                self.close()
                return
            del self.buffer[: len(PREFACE)]
            self.preface_seen = True
        view, offset, end = self.buffer, 0, len(self.buffer)
        while end - offset >= 9 and not (self.transport is None or self.transport.is_closing()):
            length = int.from_bytes(view[offset : offset + 3], "big")
            if length > MAX_FRAME:
                self._fail(FRAME_SIZE_ERROR)
                return
            if end - offset < 9 + length:
                break
            kind, flags = view[offset + 3], view[offset + 4]
            stream = int.from_bytes(view[offset + 5 : offset + 9], "big") & 0x7FFFFFFF
            payload = bytes(view[offset + 9 : offset + 9 + length])
            offset += 9 + length
            self._frame(kind, flags, stream, payload)
        del self.buffer[:offset]

    def _frame(self, kind: int, flags: int, stream: int, payload: bytes) -> None:
        if self.continuing is not None and kind != CONTINUATION:
            self._fail(PROTOCOL_ERROR)  # a header block must not be interrupted
            return
        handler = self._handlers.get(kind)
        if handler is not None:  # unknown frame types are ignored, as RFC 9113 asks
            handler(self, flags, stream, payload)

    @staticmethod
    def _unpad(flags: int, payload: bytes) -> bytes:
        if flags & PADDED:
            pad = payload[0]
            return payload[1 : len(payload) - pad]
        return payload

    def _on_headers(self, flags: int, stream_id: int, payload: bytes) -> None:
        payload = self._unpad(flags, payload)
        if flags & PRIORITY_FLAG:
            payload = payload[5:]
        if stream_id % 2 == 0 or stream_id <= self.last_stream:
            self._fail(PROTOCOL_ERROR)  # clients open odd, increasing stream ids
            return
        self.last_stream = stream_id
        stream = _Stream(stream_id, self.peer_initial_window)
        stream.block += payload
        if flags & END_STREAM:
            stream.refused = True  # a unary call needs its request message
        self.streams[stream_id] = stream
        if flags & END_HEADERS:
            self._headers_done(stream, flags & END_STREAM)
        else:
            self.continuing = stream
            self.continuing_end = flags & END_STREAM

    def _on_continuation(self, flags: int, stream_id: int, payload: bytes) -> None:
        stream = self.continuing
        if stream is None or stream.id != stream_id:
            self._fail(PROTOCOL_ERROR)
            return
        stream.block += payload
        if len(stream.block) > MAX_HEADER_BLOCK:
            self._fail(PROTOCOL_ERROR)  # a CONTINUATION flood, not a request
            return
        if flags & END_HEADERS:
            self.continuing = None
            self._headers_done(stream, self.continuing_end)

    def _headers_done(self, stream: _Stream, ended: int) -> None:
        try:
            stream.headers = self._decode(bytes(stream.block))
        except Exception:
            self._fail(COMPRESSION_ERROR)  # the HPACK state is lost: the connection is too
            return
        stream.block = bytearray()
        if self.closing:
            self._reset(stream, 7)  # REFUSED_STREAM: the client may retry elsewhere
            return
        if len(self.streams) > MAX_STREAMS:
            self._answer_error(stream, RESOURCE_EXHAUSTED, "too many concurrent calls")
            return
        problem = self._check_headers(stream)
        if problem is not None:
            self._answer_error(stream, *problem)
        elif ended:
            self._answer_error(stream, INTERNAL, "a unary call needs exactly one request message")

    def _decode(self, block: bytes) -> dict:
        """The header block as {name: value} (bytes): a block of indexed fields only is looked
        up in the decoder's tables directly; anything else goes through ``hpack``."""
        table = self.decoder.header_table
        if block and all(0x80 < b < 0xFF for b in block):
            return dict(table.get_by_index(b - 0x80) for b in block)
        return dict(self.decoder.decode(block, raw=True))

    def _check_headers(self, stream: _Stream) -> tuple[int, str] | None:
        """(code, message) when the call cannot be served; otherwise None, and
        ``stream.method`` is the method its path names."""
        headers = stream.headers
        if headers.get(b":method") != b"POST":
            return UNIMPLEMENTED, "gRPC calls are POST requests"
        if not headers.get(b"content-type", b"").startswith(b"application/grpc"):
            return INVALID_ARGUMENT, "expected content-type application/grpc"
        path = headers.get(b":path", b"").decode(errors="replace")
        stream.method = self.server.methods.get(path)
        if stream.method is None:
            return UNIMPLEMENTED, f"unknown method {path}"
        if headers.get(b"grpc-encoding", b"identity") not in DECOMPRESS:
            encoding = headers[b"grpc-encoding"].decode(errors="replace")
            return UNIMPLEMENTED, f"message encoding {encoding!r} is not supported"
        return None

    def _on_data(self, flags: int, stream_id: int, payload: bytes) -> None:
        counted = len(payload)  # padding counts against flow control too
        payload = self._unpad(flags, payload)
        self.unacked += counted
        if self.unacked >= RECEIVE_WINDOW // 2:
            self._out(frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", self.unacked)))
            self.unacked = 0
        stream = self.streams.get(stream_id)
        if stream is None or stream.refused or stream.headers is None:
            return  # answered already, reset, or never opened
        stream.body += payload
        self._hold(len(payload))
        if len(stream.body) > self.server.max_message + 5:
            size = len(stream.body) - 5
            self._answer_error(
                stream,
                RESOURCE_EXHAUSTED,
                f"payload exceeds the limit of {self.server.max_message:,} bytes "
                f"(received {size:,} so far)",
            )
            return
        if self._over_budget():
            self._answer_error(
                stream, UNAVAILABLE, "the server holds too many partly received requests"
            )
            return
        if flags & END_STREAM:
            self._call(stream)
            return
        stream.unacked += counted
        if stream.unacked >= RECEIVE_WINDOW // 2:
            self._out(frame(WINDOW_UPDATE, 0, stream_id, struct.pack(">I", stream.unacked)))
            stream.unacked = 0

    def _hold(self, n: int) -> None:
        self.held += n
        if self.server.budget is not None:
            self.server.budget.buffered += n

    def _release(self, n: int) -> None:
        self.held -= n
        if self.server.budget is not None:
            self.server.budget.buffered -= n

    def _over_budget(self) -> bool:
        budget = self.server.budget
        return budget is not None and budget.buffered > budget.limits.max_buffered_bytes

    def _on_rst_stream(self, flags: int, stream_id: int, payload: bytes) -> None:
        stream = self.streams.pop(stream_id, None)  # the client gave up: nothing is sent
        if stream is not None:
            self._release(len(stream.body))
            stream.body = bytearray()
            stream.refused = stream.cancelled = True
        self._maybe_close()

    def _on_settings(self, flags: int, stream_id: int, payload: bytes) -> None:
        if flags & ACK:
            return
        for offset in range(0, len(payload) - len(payload) % 6, 6):
            key, value = struct.unpack_from(">HI", payload, offset)
            if key == INITIAL_WINDOW_SIZE:
                delta = value - self.peer_initial_window
                self.peer_initial_window = value
                for stream in self.streams.values():
                    stream.send_window += delta
            elif key == MAX_FRAME_SIZE:
                self.peer_max_frame = value
        self._out(frame(SETTINGS, ACK, 0))
        self._flush_pending()

    def _on_ping(self, flags: int, stream_id: int, payload: bytes) -> None:
        if not flags & ACK:
            self._out(frame(PING, ACK, 0, payload))

    def _on_goaway(self, flags: int, stream_id: int, payload: bytes) -> None:
        self.closing = True
        self._maybe_close()

    def _on_window_update(self, flags: int, stream_id: int, payload: bytes) -> None:
        increment = int.from_bytes(payload[:4], "big") & 0x7FFFFFFF
        if stream_id == 0:
            self.send_window += increment
        elif stream_id in self.streams:
            self.streams[stream_id].send_window += increment
        self._flush_pending()

    _handlers = {
        DATA: _on_data,
        HEADERS: _on_headers,
        RST_STREAM: _on_rst_stream,
        SETTINGS: _on_settings,
        PING: _on_ping,
        GOAWAY: _on_goaway,
        WINDOW_UPDATE: _on_window_update,
        CONTINUATION: _on_continuation,
    }

    # -- calls and answers -------------------------------------------------------------------

    def _call(self, stream: _Stream) -> None:
        stream.refused = True  # the request is complete: later DATA is a protocol slip, dropped
        body = bytes(stream.body)
        self._release(len(body))
        stream.body = bytearray()
        try:
            message = self._message(body, stream.headers.get(b"grpc-encoding", b"identity"))
        except GrpcError as exc:
            self._answer_error(stream, exc.code, exc.message)
            return
        self.server.calls += 1
        asyncio.get_running_loop().create_task(self._run(stream, stream.method, message))

    def _message(self, body: bytes, encoding: bytes) -> bytes:
        """The one length-prefixed message of a unary request, decompressed."""
        if len(body) < 5:
            raise GrpcError(INTERNAL, "a unary call needs exactly one request message")
        compressed, length = body[0], int.from_bytes(body[1:5], "big")
        if length != len(body) - 5:
            raise GrpcError(
                INTERNAL,
                f"expected one request message of {length:,} bytes, received "
                f"{len(body) - 5:,} bytes",
            )
        message = body[5:]
        if compressed:
            if encoding == b"identity":
                raise GrpcError(INTERNAL, "a compressed message without a grpc-encoding")
            message = DECOMPRESS[encoding](message, self.server.max_message)
        return message

    async def _run(self, stream: _Stream, method: Method, message: bytes) -> None:
        try:
            response = await method(message)
        except GrpcError as exc:
            self._answer_error(stream, exc.code, exc.message)
        except Exception:
            log.exception("gRPC method failed")
            self._answer_error(stream, INTERNAL, "internal error")
        else:
            self._answer(stream, response)
        finally:
            self.server.calls -= 1

    def _answer(self, stream: _Stream, response: bytes) -> None:
        data = b"\x00" + len(response).to_bytes(4, "big") + response
        head = frame(HEADERS, END_HEADERS, stream.id, RESPONSE_HEAD)
        tail = frame(HEADERS, END_HEADERS | END_STREAM, stream.id, TRAILERS_OK)
        if len(data) <= min(stream.send_window, self.send_window, self.peer_max_frame):
            stream.send_window -= len(data)
            self.send_window -= len(data)
            self._write(stream, head + frame(DATA, 0, stream.id, data) + tail)
            return
        stream.pending, stream.after = data, tail  # waits for WINDOW_UPDATE
        self._write(stream, head + self._take_window(stream), done=False)

    def _take_window(self, stream: _Stream) -> bytes:
        """DATA frames for as much of ``stream.pending`` as the windows allow, then its
        trailers once nothing is left."""
        out = bytearray()
        while stream.pending:
            n = min(len(stream.pending), stream.send_window, self.send_window, self.peer_max_frame)
            if n <= 0:
                return bytes(out)
            out += frame(DATA, 0, stream.id, stream.pending[:n])
            stream.pending = stream.pending[n:]
            stream.send_window -= n
            self.send_window -= n
        out += stream.after
        stream.after = b""
        self.streams.pop(stream.id, None)
        return bytes(out)

    def _flush_pending(self) -> None:
        for stream in [s for s in self.streams.values() if s.pending]:
            chunk = self._take_window(stream)
            if chunk:
                self._out(chunk)
        self._maybe_close()

    def _answer_error(self, stream: _Stream, code: int, message: str) -> None:
        """A trailers-only response (status in the one HEADERS frame); a request still being
        sent is then reset with NO_ERROR, as gRPC servers do."""
        block = RESPONSE_HEAD + trailers(code, message)
        payload = frame(HEADERS, END_HEADERS | END_STREAM, stream.id, block)
        if not stream.refused:
            payload += frame(RST_STREAM, 0, stream.id, struct.pack(">I", NO_ERROR))
        self._release(len(stream.body))
        stream.body = bytearray()
        stream.refused = True
        self._write(stream, payload)

    def _reset(self, stream: _Stream, error: int) -> None:
        self._write(stream, frame(RST_STREAM, 0, stream.id, struct.pack(">I", error)))

    def _write(self, stream: _Stream, payload: bytes, done: bool = True) -> None:
        if done:
            self.streams.pop(stream.id, None)
        if stream.cancelled:
            return
        self._out(payload)
        self._maybe_close()

    def _out(self, data: bytes) -> None:
        """Queue ``data``: everything queued in one turn of the event loop (say, the answers
        to a whole batch) leaves in one write, in order."""
        if not self.outgoing:
            asyncio.get_running_loop().call_soon(self._send)
        self.outgoing.append(data)

    def _send(self) -> None:
        self._flush()
        self._maybe_close()

    def _flush(self) -> None:
        data, self.outgoing = b"".join(self.outgoing), []
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def _maybe_close(self) -> None:
        if self.closing and not self.streams:
            self.close()  # writes what is still queued first


def _inflate(wbits: int):
    def decompress(data: bytes, limit: int) -> bytes:
        inflater = zlib.decompressobj(wbits)
        try:
            out = inflater.decompress(data, limit + 1)
        except zlib.error as exc:
            raise GrpcError(INTERNAL, f"the request message does not decompress ({exc})") from None
        if len(out) > limit:
            raise GrpcError(
                RESOURCE_EXHAUSTED, f"payload exceeds the limit of {limit:,} bytes decompressed"
            )
        return out

    return decompress


# grpc-encoding -> decompressor (with the size limit); "identity" messages are never compressed.
DECOMPRESS = {b"identity": None, b"gzip": _inflate(16 + zlib.MAX_WBITS), b"deflate": _inflate(15)}
