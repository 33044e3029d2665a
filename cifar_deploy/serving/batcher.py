"""Dynamic batching: concurrent requests merged into one inference call.

Requests queue up; a single batching task takes the first and everything already waiting behind
it (up to ``max_batch_size`` rows). Whether it then waits for more (up to the queue delay,
counted from when the batch starts forming) depends on how many requests the traffic has lately
had in flight together (submitted, not yet answered; the most at any moment in the last second
or so): a batch goes as soon as it holds that many, since a closed-loop client pool (perf_analyzer,
a fixed set of workers, one request each) has no one left to send another. So a lone request on a
quiet server (never more than one in flight) is dispatched at once, with no added latency, and
under load a batch waits only until everyone who has recently been sending is in it. Requests
that arrive while a batch runs form the next one. The merged batch runs on one worker thread
(off the event loop, one inference at a time), and each caller gets exactly its own rows back.

When the delay has passed, the batch still takes in the requests the server is already
reading: it goes after a couple of event-loop turns that bring no new request (or once full).
Under load the event loop reads, parses and hands over requests one after another, so a closed
loop of 32 clients reached the queue over 1.8 ms in one trace on a 2-core machine, close to the
default delay: a request already received was otherwise left for the next batch, a whole
inference later.

The wait also ends early when the server knows no further request can come: it passes
``more_possible``, which says no when every open HTTP/1.1 connection already has its request in
the forming batch (each connection carries one request at a time) and no gRPC call is in
progress. gRPC calls share one HTTP/2 connection, so for them the in-flight count is what ends
the wait.

(Measured on a 2-core AVX2 EPYC under perf_analyzer at concurrency 8: counting the delay from
the oldest request's arrival, as Triton does, settles into batches of 4 without idle gaps and
gave the same requests/s as batches of 8 with a gap of about the delay, so the delay counts from
when the batch starts. A moving average of the gaps between arrivals, used before the in-flight
count, sent the first request of each closed-loop round alone whenever the gap before it was long,
and over gRPC split rounds of 8 into batches of 1 and 7.)

The hot path allocates no task per request: the queue is a deque, and the batching task sleeps
on one event that arrivals (and a deadline timer) set.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..errors import RequestError

# The in-flight peak is kept over windows of this length (the current one and the one before).
PEAK_WINDOW_S = 1.0
# Event-loop turns a passed deadline waits for requests already on their way in (see
# _still_arriving); the wait repeats while each such wait brings one.
ARRIVAL_TURNS = 2


@dataclass
class _Pending:
    images: np.ndarray
    future: asyncio.Future
    taken: bool = False  # in a batch: no longer waiting in the queue


class QueueFull(RequestError):
    """The model's queue holds its maximum of requests: answered at once (503, UNAVAILABLE)."""

    def __init__(self, depth: int):
        super().__init__(
            f"the model's queue is full ({depth} requests waiting, its limit); retry shortly", 503
        )


class DynamicBatcher:
    def __init__(
        self,
        predict: Callable[[np.ndarray], np.ndarray],
        max_batch_size: int = 64,
        max_queue_delay_ms: float = 2.0,
        on_batch: Callable[[int], None] | None = None,
        more_possible: Callable[[int], bool] | None = None,
        max_queue: int | None = None,
    ):
        if max_batch_size < 1 or max_queue_delay_ms < 0:
            raise ValueError("max_batch_size must be >= 1 and max_queue_delay_ms >= 0")
        self._predict = predict
        self.max_batch_size = max_batch_size
        self.max_delay = max_queue_delay_ms / 1000.0
        self._on_batch = on_batch
        # more_possible(n): can another request still arrive while a batch of n requests forms?
        # (The server answers no when every open connection's request is in the batch.)
        self._more_possible = more_possible
        self._queue: collections.deque[_Pending] = collections.deque()
        self.max_queue = max_queue  # requests waiting at most (None: no limit)
        self._waiting = 0  # requests in the queue whose callers still wait (not cancelled)
        self._wake: asyncio.Event | None = None  # set when a request arrives (or a timer fires)
        self._running = 0  # requests taken from the queue whose answers are not yet set
        self._task: asyncio.Task | None = None
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="infer")
        self._in_flight = 0  # submitted, not yet answered
        self._submitted = 0  # requests submitted since the start
        # The most requests in flight together in this window and the one before it.
        self._peak = 0
        self._peak_before = 0
        self._window_start = float("-inf")

    @property
    def queue_depth(self) -> int:
        """Requests waiting for a batch (withdrawn ones not counted)."""
        return self._waiting

    def start(self) -> None:
        self._wake = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Finish everything queued, then stop."""
        while self._task is not None and (self._queue or self._running):
            await asyncio.sleep(0.005)
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self._executor.shutdown(wait=True)

    async def submit(self, images: np.ndarray) -> np.ndarray:
        """Queue ``images`` (N rows) and wait for their N rows of probabilities."""
        if self._wake is None:
            raise RuntimeError("batcher not started")
        if self.max_queue is not None and self._waiting >= self.max_queue:
            raise QueueFull(self._waiting)
        loop = asyncio.get_running_loop()
        self._submitted += 1
        self._in_flight += 1
        self._note_in_flight(loop.time())
        future = loop.create_future()
        pending = _Pending(images, future)
        self._queue.append(pending)
        self._waiting += 1
        self._wake.set()
        try:
            return await future
        except asyncio.CancelledError:
            # The caller is gone (a reset stream, a deadline, a closed connection): a request
            # still queued is withdrawn; its future is cancelled, so the batcher passes it over.
            future.cancel()
            if not pending.taken:
                self._waiting -= 1
            raise
        finally:
            self._in_flight -= 1

    def _note_in_flight(self, now: float) -> None:
        if now - self._window_start >= PEAK_WINDOW_S:
            recent = now - self._window_start < 2 * PEAK_WINDOW_S
            self._peak_before = self._peak if recent else 0
            self._peak = 0
            self._window_start = now
        self._peak = max(self._peak, self._in_flight)

    def expected_together(self) -> int:
        """How many requests the traffic has lately had in flight at once (at least 1): a
        forming batch that holds this many has no one left to wait for."""
        return max(self._peak, self._peak_before, 1)

    async def _next(self) -> _Pending:
        while True:
            self._drop_withdrawn()
            if self._queue:
                return self._take()
            self._wake.clear()
            await self._wake.wait()

    def _drop_withdrawn(self) -> None:
        """Pass over the requests at the head of the queue whose callers are gone."""
        while self._queue and self._queue[0].future.done():
            self._queue.popleft()

    def _take(self) -> _Pending:
        self._running += 1  # counted from here, so that stop() also waits for a forming batch
        self._waiting -= 1
        pending = self._queue.popleft()
        pending.taken = True
        return pending

    async def _collect(self) -> list[_Pending]:
        first = await self._next()
        batch, rows = [first], len(first.images)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_delay
        while rows < self.max_batch_size:
            self._drop_withdrawn()
            if not self._queue:
                if len(batch) >= self.expected_together():
                    break  # everyone lately sending is in (a lone request: at once)
                if self._more_possible is not None and not self._more_possible(len(batch)):
                    break  # nobody is left to send one: waiting would only idle the worker
                if loop.time() >= deadline:
                    if not await self._still_arriving():
                        break  # time, and nothing more is on its way in
                    continue
                self._wake.clear()
                timer = loop.call_at(deadline, self._wake.set)
                await self._wake.wait()
                timer.cancel()
                continue
            if rows + len(self._queue[0].images) > self.max_batch_size:
                break  # it keeps its place: first in the next batch
            item = self._take()
            batch.append(item)
            rows += len(item.images)
        return batch

    async def _still_arriving(self) -> bool:
        """Whether requests reached the queue over the next turns of the event loop: requests
        the server has already received but is still reading, parsing and handing over (one
        turn to read a socket and start a request's handler, one for the handler to submit)."""
        submitted = self._submitted
        for _ in range(ARRIVAL_TURNS):
            await asyncio.sleep(0)
        return self._submitted != submitted

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect()
            try:
                merged = np.concatenate([p.images for p in batch])
                if self._on_batch:
                    self._on_batch(len(merged))
                probs = await loop.run_in_executor(self._executor, self._predict, merged)
                start = 0
                for pending in batch:
                    end = start + len(pending.images)
                    if not pending.future.done():
                        pending.future.set_result(probs[start:end])
                    start = end
            except Exception as exc:  # the whole batch failed: every caller hears why
                for pending in batch:
                    if not pending.future.done():
                        pending.future.set_exception(exc)
            finally:
                self._running = 0
