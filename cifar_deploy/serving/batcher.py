"""Dynamic batching: concurrent requests merged into one inference call.

Requests queue up; a single batching task takes the first and everything already waiting behind
it (up to ``max_batch_size`` rows). Whether it then waits up to ``max_queue_delay_ms`` for more
depends on the traffic: it waits when others are already queued, or when requests have recently
been arriving less than the delay apart (a moving average of the gaps between arrivals), so that
a burst merges into one batch; a lone request on a quiet server (gaps longer than the delay) is
dispatched at once, with no added latency. Requests that arrive while a batch runs form the next
one. The merged batch runs on one worker thread (off the event loop, one inference at a time),
and each caller gets exactly its own rows back.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass
class _Pending:
    images: np.ndarray
    future: asyncio.Future


class DynamicBatcher:
    def __init__(
        self,
        predict: Callable[[np.ndarray], np.ndarray],
        max_batch_size: int = 64,
        max_queue_delay_ms: float = 2.0,
        on_batch: Callable[[int], None] | None = None,
    ):
        if max_batch_size < 1 or max_queue_delay_ms < 0:
            raise ValueError("max_batch_size must be >= 1 and max_queue_delay_ms >= 0")
        self._predict = predict
        self.max_batch_size = max_batch_size
        self.max_delay = max_queue_delay_ms / 1000.0
        self._on_batch = on_batch
        self._queue: asyncio.Queue[_Pending] | None = None
        self._task: asyncio.Task | None = None
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="infer")
        self._carry: _Pending | None = None  # a request that did not fit the previous batch
        self._last_arrival: float | None = None
        self.arrival_gap = float("inf")  # moving average of seconds between arrivals

    @property
    def queue_depth(self) -> int:
        return self._queue.qsize() if self._queue else 0

    def start(self) -> None:
        self._queue = asyncio.Queue()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Finish everything queued, then stop."""
        if self._queue is not None:
            await self._queue.join()
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self._executor.shutdown(wait=True)

    async def submit(self, images: np.ndarray) -> np.ndarray:
        """Queue ``images`` (N rows) and wait for their N rows of probabilities."""
        if self._queue is None:
            raise RuntimeError("batcher not started")
        loop = asyncio.get_running_loop()
        self._arrived(loop.time())
        future = loop.create_future()
        await self._queue.put(_Pending(images, future))
        return await future

    def _arrived(self, now: float) -> None:
        if self._last_arrival is not None:
            gap = now - self._last_arrival
            finite = self.arrival_gap != float("inf")
            self.arrival_gap = 0.8 * self.arrival_gap + 0.2 * gap if finite else gap
        self._last_arrival = now

    def worth_waiting(self) -> bool:
        """More requests are expected within the queue delay: some are queued already, or
        they have been arriving closer together than the delay."""
        return not self._queue.empty() or self.arrival_gap < self.max_delay

    async def _collect(self) -> list[_Pending]:
        first = self._carry or await self._queue.get()
        self._carry = None
        batch, rows = [first], len(first.images)
        wait = self.max_delay if self.worth_waiting() else 0.0
        deadline = asyncio.get_running_loop().time() + wait
        while rows < self.max_batch_size:
            timeout = deadline - asyncio.get_running_loop().time()
            try:
                item = (
                    self._queue.get_nowait()
                    if timeout <= 0
                    else await asyncio.wait_for(self._queue.get(), timeout)
                )
            except (asyncio.TimeoutError, asyncio.QueueEmpty):
                break
            if rows + len(item.images) > self.max_batch_size:
                self._carry = item  # keeps its place: first in the next batch
                break
            batch.append(item)
            rows += len(item.images)
        return batch

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
                for _ in batch:
                    self._queue.task_done()
