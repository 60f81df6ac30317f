"""The batcher alone, driven by plain functions over lists: ordering, limits, failures, isolation,
cancellation, overload, shutdown."""

import asyncio
import random
import threading
import time

import pytest

from rnnserve.service.core.errors import Overloaded
from rnnserve.service.runtime.batcher import Batcher


def run(coro):
    return asyncio.run(coro)


def test_random_sized_requests_come_back_in_order():
    sizes = []

    def double(rows):
        sizes.append(len(rows))
        return [2 * r for r in rows]

    async def main():
        b = Batcher(double, max_batch_size=16, max_delay_s=0.005)
        rng = random.Random(0)
        inputs = [[rng.randrange(1000) for _ in range(rng.randint(1, 5))] for _ in range(200)]
        outs = await asyncio.gather(*(b.submit(x) for x in inputs))
        await b.close()
        return inputs, outs

    inputs, outs = run(main())
    assert outs == [[2 * r for r in x] for x in inputs]
    assert max(sizes) <= 16 and len(sizes) < 200


def test_a_failing_batch_fails_only_its_callers():
    def flaky(rows):
        if any(r < 0 for r in rows):
            raise ValueError("negative")
        return rows

    async def main():
        b = Batcher(flaky, max_batch_size=1, max_delay_s=0)
        results = await asyncio.gather(b.submit([1]), b.submit([-1]), b.submit([2]), return_exceptions=True)
        await b.close()
        return results

    ok1, err, ok2 = run(main())
    assert ok1 == [1] and ok2 == [2] and isinstance(err, ValueError)


def test_a_bad_request_coalesced_with_good_ones_fails_alone():
    calls = []

    def flaky(rows):
        calls.append(list(rows))
        if any(r < 0 for r in rows):
            raise ValueError("negative")
        return rows

    async def main():
        b = Batcher(flaky, max_batch_size=8, max_delay_s=0.05)
        results = await asyncio.gather(b.submit([1, 2]), b.submit([-1]), b.submit([3]), return_exceptions=True)
        await b.close()
        return results

    good, bad, other = run(main())
    assert good == [1, 2] and other == [3] and isinstance(bad, ValueError)
    assert calls[0] == [1, 2, -1, 3]  # they really shared a batch before being retried one by one


def test_an_observer_error_fails_the_batch_but_not_the_loop():
    def observer(*_):
        raise RuntimeError("observer broke")

    async def main():
        b = Batcher(lambda rows: rows, max_batch_size=4, max_delay_s=0, observer=observer)
        first = await asyncio.gather(b.submit([1]), return_exceptions=True)
        b._observer = None
        second = await asyncio.wait_for(b.submit([2]), 2)
        await b.close()
        return first, second

    (err,), second = run(main())
    assert isinstance(err, RuntimeError) and second == [2]


def test_wrong_output_count_is_an_error():
    async def main():
        b = Batcher(lambda rows: rows[:1], max_batch_size=8, max_delay_s=0.01)
        res = await asyncio.gather(b.submit([1, 2]), return_exceptions=True)
        await b.close()
        return res

    (err,) = run(main())
    assert "returned 1 rows for 2 inputs" in str(err)


def test_full_queue_refuses():
    gate, entered = threading.Event(), threading.Event()

    def slow(rows):
        entered.set()
        gate.wait(5)
        return rows

    async def main():
        b = Batcher(slow, max_batch_size=1, max_delay_s=0, max_queue=2)
        first = asyncio.ensure_future(b.submit([1]))
        assert await asyncio.to_thread(entered.wait, 5)  # the first is now running
        queued = [asyncio.ensure_future(b.submit([1])) for _ in range(2)]
        await asyncio.sleep(0)
        with pytest.raises(Overloaded):
            await b.submit([1])
        gate.set()
        await asyncio.gather(first, *queued)
        await b.close()

    run(main())


def test_cancelled_waiter_does_not_break_the_loop():
    async def main():
        b = Batcher(lambda rows: rows, max_batch_size=4, max_delay_s=0.02)
        doomed = asyncio.ensure_future(b.submit([1]))
        await asyncio.sleep(0)
        doomed.cancel()
        out = await b.submit([7])
        await b.close()
        return out

    assert run(main()) == [7]


def test_close_with_grace_finishes_queued_work():
    def slow(rows):
        time.sleep(0.02)
        return rows

    async def main():
        b = Batcher(slow, max_batch_size=1, max_delay_s=0)
        waiting = [asyncio.ensure_future(b.submit([i])) for i in range(5)]
        await asyncio.sleep(0)
        await b.close(grace_s=5)
        return await asyncio.gather(*waiting, return_exceptions=True)

    assert run(main()) == [[i] for i in range(5)]


def test_close_without_grace_answers_the_running_batch():
    gate, entered = threading.Event(), threading.Event()

    def stuck(rows):
        entered.set()
        gate.wait(5)
        return rows

    async def main():
        b = Batcher(stuck, max_batch_size=1, max_delay_s=0)
        running = asyncio.ensure_future(b.submit([1]))
        assert await asyncio.to_thread(entered.wait, 5)  # now inside the worker thread
        closing = asyncio.ensure_future(b.close(grace_s=0))
        result = await asyncio.wait_for(asyncio.gather(running, return_exceptions=True), 2)
        gate.set()
        await closing
        return result

    (err,) = run(main())
    assert isinstance(err, Overloaded) and "shutting down" in str(err)


def test_requests_run_before_queued_background_items():
    """While a run holds the worker, background items (an explanation's runs) and requests queue: every
    request runs next, before any background item, whatever their order of arrival; background items keep
    theirs, and one that does not fit a batch of requests waits instead of going first."""
    entered, release, runs = threading.Event(), threading.Event(), []

    def record(rows):
        if rows == ["hold"]:
            entered.set()
            release.wait(10)
        runs.append(list(rows))
        return rows

    async def main():
        b = Batcher(record, max_batch_size=4)
        held = asyncio.ensure_future(b.submit(["hold"]))
        await asyncio.to_thread(entered.wait, 10)
        jobs = [b.submit(["bg1"] * 4, background=True), b.submit(["r1"]), b.submit(["bg2"] * 2, background=True),
                b.submit(["r2", "r2"]), b.submit(["r3"])]
        tasks = [asyncio.ensure_future(j) for j in jobs]
        await asyncio.sleep(0)  # every submit has queued its item
        release.set()
        await asyncio.gather(held, *tasks)
        await b.close()

    run(main())
    assert runs == [["hold"], ["r1", "r2", "r2", "r3"], ["bg1"] * 4, ["bg2"] * 2]
