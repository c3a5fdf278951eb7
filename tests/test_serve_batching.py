"""The dynamic batcher alone: coalescing, keys, limits, errors, cancellation and draining (no model)."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

pytest.importorskip("fastapi")

from clip4str.serve.batching import Closed, DynamicBatcher, QueueFull  # noqa: E402


class Recorder:
    """A batch function that records its batches and the thread it ran on, optionally blocking."""

    def __init__(self, delay: float = 0.0, gate: threading.Event | None = None) -> None:
        self.batches: list[tuple[object, list]] = []
        self.threads: set[str] = set()
        self.delay = delay
        self.gate = gate
        self.started = threading.Event()

    def __call__(self, key, payloads):
        self.started.set()
        if self.gate is not None:
            self.gate.wait(10)
        time.sleep(self.delay)
        self.threads.add(threading.current_thread().name)
        self.batches.append((key, list(payloads)))
        return [(key, p * 10) for p in payloads]


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 20))


def test_concurrent_submissions_share_batches_and_keep_their_order():
    rec = Recorder()

    async def main():
        b = DynamicBatcher(rec, max_batch=8, max_wait=0.2, max_queue=64)
        b.start()
        outs = await asyncio.gather(*(b.submit("k", [i, i + 100]) for i in range(4)))
        await b.close()
        return outs

    outs = run(main())
    assert outs == [[("k", i * 10), ("k", (i + 100) * 10)] for i in range(4)]
    assert len(rec.batches) == 1 and len(rec.batches[0][1]) == 8  # filled before the wait ran out
    assert rec.threads == {"clip4str-model_0"}  # never on the event loop's thread


def test_max_batch_and_keys_split_batches():
    rec = Recorder()

    async def main():
        b = DynamicBatcher(rec, max_batch=3, max_wait=0.05, max_queue=64)
        b.start()
        a = b.submit("a", list(range(7)))
        c = b.submit("c", [1])
        outs = await asyncio.gather(a, c)
        await b.close()
        return outs

    outs = run(main())
    assert outs[0] == [("a", i * 10) for i in range(7)] and outs[1] == [("c", 10)]
    sizes = [(k, len(p)) for k, p in rec.batches]
    assert sorted(sizes) == [("a", 1), ("a", 3), ("a", 3), ("c", 1)]
    assert all(len(p) <= 3 and all(isinstance(x, int) for x in p) for _, p in rec.batches)


def test_max_wait_bounds_the_wait_of_a_lone_item():
    rec = Recorder()

    async def main():
        b = DynamicBatcher(rec, max_batch=32, max_wait=0.05, max_queue=8)
        b.start()
        t0 = time.perf_counter()
        out = await b.submit("k", [1])
        elapsed = time.perf_counter() - t0
        await b.close()
        return out, elapsed

    out, elapsed = run(main())
    assert out == [("k", 10)] and 0.04 <= elapsed < 2.0


def test_full_queue_refuses_at_once_with_a_retry_hint():
    gate = threading.Event()
    rec = Recorder(gate=gate)

    async def main():
        b = DynamicBatcher(rec, max_batch=1, max_wait=0.0, max_queue=2)
        b.start()
        first = asyncio.ensure_future(b.submit("k", [0]))
        while not rec.started.is_set():  # the first item is running (blocked): the queue is empty
            await asyncio.sleep(0.005)
        queued = asyncio.ensure_future(b.submit("k", [1, 2]))
        await asyncio.sleep(0.02)
        assert b.queued == 2
        with pytest.raises(QueueFull) as err:
            await b.submit("k", [3])
        assert err.value.retry_after >= 1 and "--max-queue" in str(err.value)
        gate.set()
        outs = await asyncio.gather(first, queued)
        await b.close()
        with pytest.raises(Closed):
            await b.submit("k", [4])
        return outs

    assert run(main()) == [[("k", 0)], [("k", 10), ("k", 20)]]


def test_a_failing_batch_fails_only_its_callers():
    def flaky(key, payloads):
        if key == "bad":
            raise RuntimeError("model exploded")
        return payloads

    async def main():
        b = DynamicBatcher(flaky, max_batch=4, max_wait=0.02, max_queue=16)
        b.start()
        good, bad = await asyncio.gather(
            b.submit("good", [1, 2]), b.submit("bad", [3]), return_exceptions=True
        )
        again = await b.submit("good", [5])
        await b.close()
        return good, bad, again

    good, bad, again = run(main())
    assert good == [1, 2] and isinstance(bad, RuntimeError) and again == [5]


def test_cancelled_items_are_dropped_and_close_drains_the_rest():
    rec = Recorder()

    async def main():
        b = DynamicBatcher(rec, max_batch=8, max_wait=0.3, max_queue=16)
        b.start()
        gone = asyncio.ensure_future(b.submit("k", [1]))
        kept = asyncio.ensure_future(b.submit("k", [2]))
        await asyncio.sleep(0.02)
        gone.cancel()
        await asyncio.sleep(0.01)
        await b.close()  # does not wait for max_wait: runs what is queued, then stops
        return await kept

    assert run(main()) == [("k", 20)]
    assert [p for _, p in rec.batches] == [[2]]
