"""The HTTP server's inference lane: ``POST /v2/models/{name}[/versions/{v}]/infer`` answered from
the connection's protocol itself, without an ASGI request/response cycle.

uvicorn hands every request to the application through an ASGI cycle: a scope dictionary, a
``receive`` that waits on an event for the body, a ``send`` called twice that re-checks every
response header, and the application's own layers around each. For the request this server
exists for, that bookkeeping cost more CPU than parsing the tensors (measured with
``benchmarks/serve_frontend.py``), and at high concurrency it sits on the critical path between
one batch's answers and the next batch's requests. A request takes the lane when it is the plain
case: HTTP/1.1, kept alive, ``Content-Length`` within the payload limit, no ``Expect``, no transfer
coding, no percent-encoded path, and nothing pipelined ahead of it on its connection. Its body is
gathered from the parser's callbacks (under the same body deadline and buffered-bytes budget as
every other body), the server's :class:`InferLane` answers it, and the answer leaves in one write.
Everything else, and every other endpoint, takes uvicorn's ASGI path; the answers, errors, limits
and metrics are the same on both.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

from uvicorn.protocols.http.httptools_impl import STATUS_LINE

from .protocol import JSON_TYPE, Encoded

log = logging.getLogger(__name__)

INFER_LENGTH = b"inference-header-content-length"  # Triton's binary-extension header, lowercased


class InferLane(Protocol):
    """What the server supplies: which requests are inference, their answers, and the errors the
    lane itself raises (a body too slow or too much buffered), counted in the server's metrics."""

    budget: object  # a .limits.BodyBudget

    def target(self, path: bytes) -> tuple[str, str | None] | None: ...

    async def answer(
        self,
        target: tuple[str, str | None],
        infer_length: bytes | None,
        body: bytes,
        started: float,
    ) -> tuple[int, Encoded]: ...

    def error(
        self, target: tuple[str, str | None], status: int, message: str, started: float
    ) -> Encoded: ...


class _Quiet:
    """uvicorn's protocol sets its cycle's message event when the connection is lost; the lane's
    requests wait on nothing."""

    @staticmethod
    def set() -> None:
        pass


class LaneCycle:
    """One request on the lane: what uvicorn's protocol reads from its current cycle
    (``response_complete``, ``keep_alive``, ``disconnected``, ``message_event``) and the body as it
    arrives."""

    __slots__ = (
        "target",
        "infer_length",
        "started",
        "chunks",
        "size",
        "received",
        "timer",
        "keep_alive",
        "response_complete",
        "disconnected",
    )
    message_event = _Quiet

    def __init__(self, target, infer_length: bytes | None, started: float):
        self.target, self.infer_length, self.started = target, infer_length, started
        self.chunks: list[bytes] = []
        self.size = 0  # body bytes held, counted in the budget's buffered bytes
        self.received = False
        self.timer: asyncio.TimerHandle | None = None
        self.keep_alive = True  # uvicorn's shutdown() clears it: the answer then closes
        self.response_complete = False
        self.disconnected = False


def lane_protocol(base, lane: InferLane):
    """``base`` (uvicorn's httptools protocol, or a subclass) with the inference lane."""
    budget = lane.budget

    class LaneProtocol(base):
        def _lane_cycle(self) -> LaneCycle | None:
            """A cycle for this request when it is the plain case the lane takes, else None."""
            parser = self.parser
            if parser.get_method() != b"POST" or self.expect_100_continue:
                return None
            if parser.get_http_version() != "1.1" or not parser.should_keep_alive():
                return None
            if parser.should_upgrade():
                return None  # uvicorn decides what an upgrade request gets
            if self.cycle is not None and not self.cycle.response_complete:
                return None  # pipelined behind an unanswered request: uvicorn queues it
            path, _, _ = self.url.partition(b"?")
            if b"%" in path:
                return None  # uvicorn decodes it
            target = lane.target(path)
            if target is None:
                return None
            length = infer_length = None
            for name, value in self.headers:
                if name == b"content-length":
                    length = value
                elif name == INFER_LENGTH:
                    infer_length = value
                elif name == b"transfer-encoding":
                    return None
            if length is None or not length.isdigit() or int(length) > budget.max_payload:
                return None  # no length, or too large: the ASGI path answers as it always has
            return LaneCycle(target, infer_length, self.loop.time())

        def on_headers_complete(self) -> None:
            cycle = self._lane_cycle()
            if cycle is None:
                super().on_headers_complete()
                return
            self._head_arrived()
            self.cycle = cycle

        def on_body(self, body: bytes) -> None:
            cycle = self.cycle
            if type(cycle) is not LaneCycle:
                return super().on_body(body)
            if cycle.response_complete:
                return  # already refused; the connection is closing
            if budget.buffered + len(body) > budget.limits.max_buffered_bytes:
                message = (
                    "the server is holding too many partly received request bodies "
                    f"({budget.buffered:,} bytes); retry shortly"
                )
                self._lane_refuse(cycle, 503, message)
                return
            budget.buffered += len(body)
            cycle.size += len(body)
            cycle.chunks.append(body)

        def on_message_complete(self) -> None:
            cycle = self.cycle
            if type(cycle) is not LaneCycle:
                return super().on_message_complete()
            if cycle.response_complete:
                return
            cycle.received = True
            body = b"".join(cycle.chunks)
            self._lane_release(cycle)
            task = self.loop.create_task(self._lane_answer(cycle, body))
            task.add_done_callback(self.tasks.discard)  # uvicorn's shutdown waits for its tasks
            self.tasks.add(task)

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            cycle = self.cycle
            waiting = type(cycle) is LaneCycle and not (cycle.received or cycle.response_complete)
            if waiting and cycle.timer is None and not self.transport.is_closing():
                # A body still on its way has a deadline, counted from its head's arrival.
                deadline = cycle.started + budget.limits.body_timeout_s
                cycle.timer = self.loop.call_at(deadline, self._lane_timeout, cycle)

        def connection_lost(self, exc) -> None:
            cycle = self.cycle
            if type(cycle) is LaneCycle and not cycle.received:
                self._lane_release(cycle)
            super().connection_lost(exc)

        def _lane_release(self, cycle: LaneCycle) -> None:
            budget.buffered -= cycle.size
            cycle.size, cycle.chunks = 0, []
            if cycle.timer is not None:
                cycle.timer.cancel()
                cycle.timer = None

        def _lane_timeout(self, cycle: LaneCycle) -> None:
            cycle.timer = None
            if cycle.received or cycle.response_complete:
                return
            seconds = budget.limits.body_timeout_s
            message = (
                f"the request body did not arrive within {seconds:g} s "
                f"({cycle.size:,} bytes received)"
            )
            self._lane_refuse(cycle, 408, message)

        def _lane_refuse(self, cycle: LaneCycle, status: int, message: str) -> None:
            """An error before the whole body arrived: the rest would be read as the next
            request, so the connection closes after it."""
            self._lane_release(cycle)
            encoded = lane.error(cycle.target, status, message, cycle.started)
            self._lane_write(cycle, status, encoded, True)

        async def _lane_answer(self, cycle: LaneCycle, body: bytes) -> None:
            try:
                status, encoded = await lane.answer(
                    cycle.target, cycle.infer_length, body, cycle.started
                )
            except Exception:  # the server's answer catches its own errors: this is a bug
                log.exception("internal error in the inference lane")
                status, encoded = 500, Encoded(b'{"error": "internal error"}', JSON_TYPE)
            self._lane_write(cycle, status, encoded, False)

        def _lane_write(self, cycle: LaneCycle, status: int, encoded: Encoded, close: bool):
            if cycle.response_complete:
                return
            cycle.response_complete = True
            transport = self.transport
            if cycle.disconnected or transport.is_closing():
                return
            keep = cycle.keep_alive and not close
            body = encoded.body
            parts = [
                STATUS_LINE[status],
                b"content-type: ",
                encoded.media_type,
                b"\r\ncontent-length: %d\r\n" % len(body),
            ]
            for name, value in encoded.headers:
                parts += [name, b": ", value, b"\r\n"]
            if not keep:
                parts.append(b"connection: close\r\n")
            parts += [b"\r\n", body]
            transport.write(b"".join(parts))
            if not keep:
                transport.close()
            self.on_response_complete()

    return LaneProtocol
