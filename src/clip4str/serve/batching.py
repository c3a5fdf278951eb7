"""Dynamic batching: single images from concurrent requests share one forward pass.

Requests submit items (e.g. preprocessed images) with a key (the decoding options); a collector task on
the event loop takes the oldest waiting item, waits until ``max_batch`` items with its key are waiting or
``max_wait`` has passed since it arrived, and hands that batch to one model thread. The event loop never
runs the model. At most ``max_queue`` items wait: beyond that :meth:`DynamicBatcher.submit` raises
:class:`QueueFull` at once (the service answers 503 with ``Retry-After``), so memory stays bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any


class QueueFull(Exception):
    """The queue cannot take the items now; ``retry_after`` is a hint in whole seconds."""

    def __init__(self, queued: int, wanted: int, limit: int, retry_after: int) -> None:
        super().__init__(
            f"the queue holds {queued} image(s) and cannot take {wanted} more (limit {limit}, --max-queue); "
            f"retry in {retry_after} s"
        )
        self.retry_after = retry_after


class Closed(Exception):
    """The batcher is shutting down and takes no new items."""


class Reservation:
    """Places held in a :class:`DynamicBatcher`'s queue (see :meth:`DynamicBatcher.reserve`)."""

    def __init__(self, batcher: DynamicBatcher, count: int) -> None:
        self._batcher, self.count = batcher, count

    def release(self) -> int:
        """Give the places back (once; later calls do nothing); returns how many were held."""
        count, self.count = self.count, 0
        self._batcher._reserved -= count
        return count


@dataclass
class _Job:
    key: Hashable
    payload: Any
    future: asyncio.Future
    arrival: float


@dataclass
class BatchStats:
    """Counters since start: batches run, items in them, and the mean batch time (exponential, seconds)."""

    batches: int = 0
    items: int = 0
    mean_batch_s: float = 0.0


class DynamicBatcher:
    """Collects items from concurrent callers into batches run by ``run(key, payloads) -> results`` (one
    result per payload, in order) on a single worker thread.

    Args:
        run: the batch function; it sees only payloads sharing one key.
        max_batch: most items per batch (1 = no batching).
        max_wait: seconds the oldest waiting item may wait for its batch to fill.
        max_queue: most items waiting (not counting the batch being run).
    """

    def __init__(
        self,
        run: Callable[[Hashable, list[Any]], Sequence[Any]],
        max_batch: int = 32,
        max_wait: float = 0.005,
        max_queue: int = 256,
    ) -> None:
        if max_batch < 1 or max_queue < 1 or max_wait < 0:
            raise ValueError("max_batch and max_queue must be >= 1 and max_wait >= 0")
        self._run = run
        self.max_batch = max_batch
        self.max_wait = max_wait
        self.max_queue = max_queue
        self.stats = BatchStats()
        self._pending: deque[_Job] = deque()
        self._reserved = 0  # places promised to requests still decoding their images
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._closing = False
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="clip4str-model")

    @property
    def queued(self) -> int:
        """Items waiting for a batch."""
        return len(self._pending)

    @property
    def closing(self) -> bool:
        return self._closing

    def start(self) -> None:
        """Start the collector on the running event loop."""
        self._wakeup = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._collect(), name="clip4str-batcher")

    async def close(self) -> None:
        """Take no new items, run every waiting one, then stop the model thread."""
        self._closing = True
        if self._wakeup is not None:
            self._wakeup.set()
        if self._task is not None:
            await self._task
        self._executor.shutdown(wait=True)

    def retry_after(self) -> int:
        """Seconds until the queue has likely drained: waiting batches times the mean batch time, >= 1."""
        batches = self.queued / self.max_batch + 1
        return max(1, math.ceil(batches * self.stats.mean_batch_s))

    def reserve(self, count: int) -> Reservation:
        """Promise ``count`` places in the queue before the items exist (a request's images are decoded only
        when they can be queued, so decoded images never outnumber ``max_queue``). Raises
        :class:`QueueFull` or :class:`Closed` at once; pass the reservation to :meth:`submit`, and
        :meth:`Reservation.release` it if the items are never submitted."""
        if self._closing or self._wakeup is None:
            raise Closed("the service is shutting down")
        taken = self.queued + self._reserved
        if taken + count > self.max_queue:
            raise QueueFull(taken, count, self.max_queue, self.retry_after())
        self._reserved += count
        return Reservation(self, count)

    async def submit(
        self, key: Hashable, payloads: Sequence[Any], reservation: Reservation | None = None
    ) -> list[Any]:
        """Queue ``payloads`` under ``key`` and wait for their results (in order).

        Raises :class:`QueueFull` without queueing anything when they do not fit (unless ``reservation``
        holds their places), :class:`Closed` while shutting down, and whatever ``run`` raised for their batch.
        """
        held = reservation.release() if reservation is not None else 0
        if self._closing or self._wakeup is None:
            raise Closed("the service is shutting down")
        if len(payloads) > held and self.queued + self._reserved + len(payloads) - held > self.max_queue:
            raise QueueFull(self.queued + self._reserved, len(payloads), self.max_queue, self.retry_after())
        loop = asyncio.get_running_loop()
        now = loop.time()
        jobs = [_Job(key, p, loop.create_future(), now) for p in payloads]
        self._pending.extend(jobs)
        self._wakeup.set()
        try:
            return list(await asyncio.gather(*(j.future for j in jobs)))
        except asyncio.CancelledError:  # the client went away: its items are dropped unless already running
            for job in jobs:
                job.future.cancel()
            raise

    def _waiting(self, key: Hashable) -> int:
        return sum(1 for j in self._pending if j.key == key)

    def _take(self, key: Hashable) -> list[_Job]:
        batch: list[_Job] = []
        rest: deque[_Job] = deque()
        for job in self._pending:
            if job.key == key and len(batch) < self.max_batch:
                batch.append(job)
            else:
                rest.append(job)
        self._pending = rest
        return batch

    async def _collect(self) -> None:
        assert self._wakeup is not None
        loop = asyncio.get_running_loop()
        while True:
            while self._pending and self._pending[0].future.cancelled():
                self._pending.popleft()
            if not self._pending:
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            first = self._pending[0]
            deadline = first.arrival + self.max_wait
            while not self._closing and self._waiting(first.key) < self.max_batch:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                self._wakeup.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), remaining)
            batch = [j for j in self._take(first.key) if not j.future.cancelled()]
            if batch:
                await self._run_batch(loop, first.key, batch)

    async def _run_batch(self, loop: asyncio.AbstractEventLoop, key: Hashable, batch: list[_Job]) -> None:
        start = time.perf_counter()
        try:
            results = await loop.run_in_executor(self._executor, self._run, key, [j.payload for j in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"batch function returned {len(results)} results for {len(batch)} items")
        except Exception as err:  # noqa: BLE001 - handed to the callers of this batch only
            for job in batch:
                if not job.future.done():
                    job.future.set_exception(err)
            return
        finally:
            elapsed = time.perf_counter() - start
            stats = self.stats
            stats.mean_batch_s = elapsed if stats.batches == 0 else 0.8 * stats.mean_batch_s + 0.2 * elapsed
            stats.batches += 1
            stats.items += len(batch)
        for job, result in zip(batch, results):
            if not job.future.done():
                job.future.set_result(result)
