"""The batcher alone, driven by plain functions: ordering, limits, failures, cancellation, overload."""

import asyncio

import numpy as np
import pytest

from service.batcher import Batcher
from service.errors import Overloaded


def run(coro):
    return asyncio.run(coro)


def test_random_sized_requests_come_back_in_order():
    sizes = []

    def double(x):
        sizes.append(len(x))
        return x * 2

    async def main():
        b = Batcher(double, max_batch_size=16, max_delay_s=0.005)
        rng = np.random.default_rng(0)
        inputs = [rng.integers(0, 1000, size=(int(rng.integers(1, 6)), 3)) for _ in range(200)]
        outs = await asyncio.gather(*(b.submit(x) for x in inputs))
        await b.close()
        return inputs, outs

    inputs, outs = run(main())
    for x, y in zip(inputs, outs):
        assert (y == x * 2).all()
    assert max(sizes) <= 16 and len(sizes) < 200


def test_a_failing_batch_fails_only_its_callers():
    def flaky(x):
        if (x < 0).any():
            raise ValueError("negative")
        return x

    async def main():
        b = Batcher(flaky, max_batch_size=1, max_delay_s=0)
        results = await asyncio.gather(b.submit(np.array([[1]])), b.submit(np.array([[-1]])),
                                       b.submit(np.array([[2]])), return_exceptions=True)
        await b.close()
        return results

    ok1, err, ok2 = run(main())
    assert ok1.tolist() == [[1]] and ok2.tolist() == [[2]]
    assert isinstance(err, ValueError)


def test_wrong_output_count_is_an_error():
    async def main():
        b = Batcher(lambda x: x[:1], max_batch_size=8, max_delay_s=0.01)
        res = await asyncio.gather(b.submit(np.ones((2, 1))), return_exceptions=True)
        await b.close()
        return res

    (err,) = run(main())
    assert "returned 1 rows for 2 inputs" in str(err)


def test_full_queue_refuses():
    import threading

    gate = threading.Event()

    def slow(x):
        gate.wait(5)
        return x

    async def main():
        b = Batcher(slow, max_batch_size=1, max_delay_s=0, max_queue=2)
        first = asyncio.ensure_future(b.submit(np.ones((1, 1))))
        await asyncio.sleep(0.05)  # the first is now running
        queued = [asyncio.ensure_future(b.submit(np.ones((1, 1)))) for _ in range(2)]
        await asyncio.sleep(0)
        with pytest.raises(Overloaded):
            await b.submit(np.ones((1, 1)))
        gate.set()
        await asyncio.gather(first, *queued)
        await b.close()

    run(main())


def test_cancelled_waiter_does_not_break_the_loop():
    async def main():
        b = Batcher(lambda x: x, max_batch_size=4, max_delay_s=0.02)
        doomed = asyncio.ensure_future(b.submit(np.ones((1, 1))))
        await asyncio.sleep(0)
        doomed.cancel()
        out = await b.submit(np.full((1, 1), 7))
        await b.close()
        return out

    assert run(main()).tolist() == [[7]]


def test_rows_of_different_widths_are_padded_on_the_right():
    seen = []

    def record(x):
        seen.append(x.copy())
        return x.sum(axis=1, keepdims=True)

    async def main():
        b = Batcher(record, max_batch_size=8, max_delay_s=0.02)
        outs = await asyncio.gather(b.submit(np.array([[1, 2]])), b.submit(np.array([[3, 4, 5, 6]])))
        await b.close()
        return outs

    a, c = run(main())
    assert a.tolist() == [[3]] and c.tolist() == [[18]]
    assert seen[-1].tolist() == [[1, 2, 0, 0], [3, 4, 5, 6]]


def test_close_with_grace_finishes_queued_work():
    import time as _time

    def slow(x):
        _time.sleep(0.02)
        return x

    async def main():
        b = Batcher(slow, max_batch_size=1, max_delay_s=0)
        waiting = [asyncio.ensure_future(b.submit(np.full((1, 1), i))) for i in range(5)]
        await asyncio.sleep(0)
        await b.close(grace_s=5)
        return await asyncio.gather(*waiting, return_exceptions=True)

    assert [r.tolist() for r in run(main())] == [[[i]] for i in range(5)]
