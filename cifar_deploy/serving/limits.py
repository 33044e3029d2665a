"""The server's resource limits, enforced where each resource is spent.

- **Connections** (the HTTP protocol, :class:`GuardedProtocol`): at most ``max_connections`` open
  at once (the next is answered 503 and closed at once, so idle sockets cannot use up the
  process's file descriptors), and a connection must send a complete request head within
  ``header_timeout_s`` of opening or of its previous response (then it is closed).
- **Request bodies** (:class:`BodyBudget`, used by every handler that reads a body): the whole
  body must arrive within ``body_timeout_s`` (408), and the bytes held in partly received bodies
  across all requests stay under ``max_buffered_bytes`` (503), so stalled uploads cannot pin
  memory.
- **Log volume**: errors the event loop reports (a refused ``accept()``, a reset connection) are
  logged as one line each, at most one per second, with a count of those left out.

Malformed request heads (a bad ``Content-Length``) get the project's JSON error shape.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass, replace

from ..errors import RequestError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServerLimits:
    header_timeout_s: float = 10.0  # seconds to send a request head after connecting or a reply
    body_timeout_s: float = 30.0  # seconds to send a whole request body
    max_connections: int = 1000  # open HTTP connections; the next one gets 503
    max_buffered_bytes: int = 64 * 2**20  # bytes of request bodies held at once, all requests
    keep_alive_s: float = 5.0  # idle seconds between requests on a kept-alive connection
    max_head_bytes: int = 64 * 2**10  # request line and headers; beyond it 431 and closed
    # Requests waiting for their model's batcher (Triton's max_queue_size); beyond it HTTP
    # answers 503 and gRPC UNAVAILABLE at once.
    max_queue: int = 256
    # gRPC (gRPC core enforces these; see grpc_server.server_options)
    grpc_max_connections: int = 128  # open gRPC connections (clients multiplex on a few)
    grpc_max_streams: int = 100  # streams open at once on one connection
    grpc_max_calls: int = 512  # calls in progress on the whole server; more: RESOURCE_EXHAUSTED
    grpc_idle_s: float = 30.0  # a connection with no call for this long is closed (GOAWAY)
    grpc_max_age_s: float = 3600.0  # a connection is asked to go away after this long


class BodyBudget:
    """Request bodies read under a deadline and a server-wide cap on buffered bytes."""

    def __init__(self, limits: ServerLimits, max_payload_bytes: int):
        self.limits, self.max_payload = limits, max_payload_bytes
        self.buffered = 0  # bytes held by bodies being received right now

    async def read(self, receive) -> bytes:
        """The whole body from ASGI ``receive``: 413 past the payload limit, 408 when it does
        not arrive in time, 503 when the server already holds too many bytes of bodies."""
        chunks: list[bytes] = []
        seconds = self.limits.body_timeout_s
        try:
            if hasattr(asyncio, "timeout"):  # Python 3.11+: a timer on this task, no new task
                async with asyncio.timeout(seconds):
                    return await self._read(receive, chunks)
            return await asyncio.wait_for(self._read(receive, chunks), seconds)  # Python 3.10
        except (TimeoutError, asyncio.TimeoutError):
            size = sum(len(c) for c in chunks)
            raise RequestError(
                f"the request body did not arrive within "
                f"{self.limits.body_timeout_s:g} s ({size:,} bytes received)",
                408,
            ) from None

    async def _read(self, receive, chunks: list[bytes]) -> bytes:
        size = 0
        try:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    raise RequestError("the client disconnected before sending the whole body")
                chunk = message.get("body", b"")
                if size + len(chunk) > self.max_payload:
                    raise RequestError(
                        f"payload exceeds the limit of {self.max_payload:,} bytes", 413
                    )
                if self.buffered + len(chunk) > self.limits.max_buffered_bytes:
                    raise RequestError(
                        "the server is holding too many partly received request bodies "
                        f"({self.buffered:,} bytes); retry shortly",
                        503,
                    )
                size += len(chunk)
                self.buffered += len(chunk)
                chunks.append(chunk)
                if not message.get("more_body", False):
                    return b"".join(chunks)
        finally:
            self.buffered -= size


class RateLimitedLog:
    """At most one line per ``interval`` seconds; the lines left out are counted in the next."""

    def __init__(self, logger: logging.Logger, interval: float = 1.0):
        self.logger, self.interval = logger, interval
        self.last, self.dropped = 0.0, 0

    def warning(self, message: str) -> None:
        now = time.monotonic()
        if now - self.last < self.interval:
            self.dropped += 1
            return
        more = f" ({self.dropped} more like it not shown)" if self.dropped else ""
        self.logger.warning("%s%s", message, more)
        self.last, self.dropped = now, 0


_loop_errors = RateLimitedLog(log)


def quiet_loop_errors(loop, context: dict) -> None:
    """Event-loop exception handler: one line per error (type and message, no traceback),
    rate-limited, instead of asyncio's full traceback for every refused connection."""
    exc = context.get("exception")
    what = f"{type(exc).__name__}: {exc}" if exc is not None else ""
    _loop_errors.warning(f"{context.get('message', 'event loop error')} {what}".strip())


def _json_head(status: int, reason: str, message: str) -> bytes:
    body = json.dumps({"error": message}).encode()
    return (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    ).encode() + body


class OneWriteResponses:
    """A connection's transport as one response sees it: the response head that uvicorn writes
    on ``http.response.start`` is held back and sent with the first body bytes, in one write
    (one system call and one TCP segment instead of two). Held bytes are flushed at the latest
    on the event loop's next turn, or before the connection is closed."""

    __slots__ = ("_transport", "_held", "_first")

    def __init__(self, transport):
        self._transport, self._held, self._first = transport, None, True

    def write(self, data: bytes) -> None:
        if self._first:  # the head (or a 100 Continue): held until the next write or turn
            self._first, self._held = False, data
            asyncio.get_running_loop().call_soon(self.flush)
            return
        if self._held is not None:
            data, self._held = self._held + data, None
        self._transport.write(data)

    def flush(self) -> None:
        if self._held is not None:
            data, self._held = self._held, None
            if not self._transport.is_closing():
                self._transport.write(data)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def __getattr__(self, name):
        return getattr(self._transport, name)


class OpenConnections:
    """How many HTTP connections the server has open right now (uvicorn's own set of
    connections, which the protocol hands over when the first one opens); 0 before any."""

    def __init__(self):
        self._connections: set | tuple = ()

    def bind(self, connections: set) -> None:
        self._connections = connections

    def __len__(self) -> int:
        return len(self._connections)


def guarded_protocol(
    limits: ServerLimits, open_connections: OpenConnections | None = None, lane=None
):
    """uvicorn's httptools protocol with the connection limit, the request-head timeout and
    JSON 400s for malformed heads; ``open_connections`` is kept bound to the server's set of
    open connections; with ``lane`` (an :class:`~.http_lane.InferLane`), plain inference
    requests are answered from the protocol (see :mod:`.http_lane`)."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    refusals = RateLimitedLog(log)

    class GuardedProtocol(HttpToolsProtocol):
        _head_timer = None
        _in_head = True  # a request head has started (or may start) and is not complete
        _head_bytes = 0  # bytes received in reads that left the head incomplete

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            if open_connections is not None:
                open_connections.bind(self.connections)
            if len(self.connections) > limits.max_connections:
                refusals.warning(
                    f"refused a connection: {limits.max_connections} are open (the limit)"
                )
                message = f"the server has {limits.max_connections} open connections (its limit)"
                transport.write(_json_head(503, "Service Unavailable", message))
                transport.close()
                return
            self._arm_head_timer()

        def _arm_head_timer(self) -> None:
            self._disarm_head_timer()
            self._head_timer = self.loop.call_later(limits.header_timeout_s, self._head_timeout)

        def _disarm_head_timer(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_timeout(self) -> None:
            self._head_timer = None
            if not self.transport.is_closing():
                self.transport.close()

        def connection_lost(self, exc) -> None:
            self._disarm_head_timer()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if not self._in_head or self.transport.is_closing():
                return
            # The parser keeps a partial head between reads, at a cost that grows with it:
            # a head larger than the limit is refused before it grows further.
            self._head_bytes += len(data)
            if self._head_bytes > limits.max_head_bytes:
                message = (
                    f"the request head exceeds {limits.max_head_bytes:,} bytes "
                    f"({self._head_bytes:,} received); send fewer or shorter headers"
                )
                self.transport.write(_json_head(431, "Request Header Fields Too Large", message))
                self.transport.close()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._in_head, self._head_bytes = True, 0

        def _head_arrived(self) -> None:
            """The request head is complete: its timer and its size count stop."""
            self._disarm_head_timer()
            self._in_head, self._head_bytes = False, 0

        def on_headers_complete(self) -> None:
            self._head_arrived()
            super().on_headers_complete()
            self.cycle.transport = OneWriteResponses(self.cycle.transport)

        def on_response_complete(self) -> None:
            super().on_response_complete()  # arms uvicorn's keep-alive timer
            if not self.transport.is_closing():
                self._arm_head_timer()  # a started but unfinished next head is bounded too

        def send_400_response(self, msg: str) -> None:
            message = "malformed HTTP request (check the request line and headers, "
            message += "e.g. Content-Length must be a non-negative integer)"
            self.transport.write(_json_head(400, "Bad Request", message))
            self.transport.close()

    if lane is None:
        return GuardedProtocol
    from .http_lane import lane_protocol

    return lane_protocol(GuardedProtocol, lane)


# What the guarded protocol and the HTTP lane use of uvicorn's httptools protocol, which is
# private API: checked at start-up (see private_api_problem); pyproject pins the uvicorn
# releases they are tested with.
PROTOCOL_METHODS = (
    "connection_made",
    "connection_lost",
    "data_received",
    "on_message_begin",
    "on_headers_complete",
    "on_body",
    "on_message_complete",
    "on_response_complete",
    "send_400_response",
)
PROTOCOL_ATTRIBUTES = ("parser", "connections", "tasks", "loop", "cycle", "transport", "headers")
_checked: dict[str, str | None] = {}


def private_api_problem() -> str | None:
    """What is missing from the uvicorn internals the guarded protocol and the HTTP lane rely
    on (None: all there), checked once per process on a protocol instance."""
    if "result" not in _checked:
        _checked["result"] = _find_private_api_problem()
    return _checked["result"]


def _find_private_api_problem() -> str | None:
    try:
        import uvicorn
        from uvicorn.protocols.http import httptools_impl
        from uvicorn.server import ServerState
    except ImportError as exc:
        return f"cannot import uvicorn's httptools protocol ({exc})"
    protocol = getattr(httptools_impl, "HttpToolsProtocol", None)
    if protocol is None or not hasattr(httptools_impl, "STATUS_LINE"):
        return "uvicorn.protocols.http.httptools_impl lacks HttpToolsProtocol or STATUS_LINE"
    missing = [m for m in PROTOCOL_METHODS if not callable(getattr(protocol, m, None))]
    if missing:
        return f"HttpToolsProtocol lacks {', '.join(missing)}"

    async def app(scope, receive, send):  # pragma: no cover - never called
        pass

    try:
        config = uvicorn.Config(app, http="httptools", log_level="error")
        config.load()

        async def build():
            return protocol(config=config, server_state=ServerState(), app_state={})

        instance = asyncio.run(build()) if not _loop_running() else None
    except Exception as exc:
        return f"cannot build HttpToolsProtocol ({type(exc).__name__}: {exc})"
    if instance is not None:
        missing = [a for a in PROTOCOL_ATTRIBUTES if not hasattr(instance, a)]
        if missing:
            return f"HttpToolsProtocol instances lack {', '.join(missing)}"
    return None


def _loop_running() -> bool:
    try:
        asyncio.get_running_loop()
        return True
    except RuntimeError:
        return False


def uvicorn_config(
    app, host: str, port: int, limits: ServerLimits | None = None, fast_path=True, **kwargs
):
    """The uvicorn configuration every ``serve`` uses (and the tests): the guarded protocol
    (with the HTTP lane unless ``fast_path`` is off), the keep-alive timeout, and a 30 s
    graceful shutdown. When the installed uvicorn lacks the internals they rely on, one log
    line says so and the server runs on uvicorn's public options instead: h11 with its head
    size limit, ``limit_concurrency`` for the connection cap, and no HTTP lane."""
    import uvicorn

    limits = limits or ServerLimits()
    common = dict(
        timeout_keep_alive=limits.keep_alive_s,
        timeout_graceful_shutdown=30,
        # Less work per request: nothing reads the client address or an access log, and the
        # server header only names uvicorn.
        proxy_headers=False,
        access_log=False,
        server_header=False,
    )
    problem = private_api_problem()
    if problem is not None:
        log.warning(
            "uvicorn %s: %s; serving on its public options (no HTTP lane, no head timeout)",
            uvicorn.__version__,
            problem,
        )
        return uvicorn.Config(
            app,
            host=host,
            port=port,
            http="h11",
            h11_max_incomplete_event_size=limits.max_head_bytes,
            limit_concurrency=limits.max_connections,
            **common,
            **kwargs,
        )
    lane = getattr(app, "lane", None) if fast_path else None
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        http=guarded_protocol(limits, getattr(app, "open_connections", None), lane),
        **common,
        **kwargs,
    )


def raise_open_file_limit(wanted: int) -> int:
    """Raise this process's soft limit on open files towards ``wanted`` (within the hard limit);
    returns the soft limit now in force."""
    try:
        import resource
    except ImportError:  # not on Windows
        return wanted
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft


RESERVED_FILES = 64  # files a server keeps open besides its connections: models, logs, pipes


def fit_to_open_files(limits: ServerLimits, grpc: bool) -> tuple[ServerLimits, str | None]:
    """The connection caps, HTTP and gRPC together, within what this process may open (its
    soft limit on open files, raised towards what they need first), keeping
    :data:`RESERVED_FILES` for everything else; shrunk in proportion when they do not fit,
    with a line that says so (None: they fit)."""
    grpc_share = limits.grpc_max_connections if grpc else 0
    wanted = limits.max_connections + grpc_share
    files = raise_open_file_limit(wanted + 4 * RESERVED_FILES)
    room = files - RESERVED_FILES
    if wanted <= room:
        return limits, None
    scale = max(room, 2) / wanted
    http = max(1, int(limits.max_connections * scale))
    fitted = replace(
        limits,
        max_connections=http,
        grpc_max_connections=max(1, int(grpc_share * scale))
        if grpc
        else limits.grpc_max_connections,
    )
    caps = f"{http} HTTP" + (f" and {fitted.grpc_max_connections} gRPC" if grpc else "")
    return fitted, (
        f"this process may open only {files} files: at most {caps} connections at once "
        f"(asked for {limits.max_connections}" + (f" and {grpc_share}" if grpc else "") + ")"
    )
