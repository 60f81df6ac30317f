"""Dynamic batching: coalesce concurrent requests into one model run. Knows nothing of text or HTTP.

Event-driven: wait for the first request, drain what is queued, and wait out the rest of max_delay only
while the batch is not full. One batch runs at a time in a worker thread, and the next one fills
meanwhile, so under load batches grow by themselves even with max_delay = 0. Items are lists (of raw
texts, for the runtime); run_batch gets their concatenation and returns a result sliceable by row.
Background items (an explanation's runs) are taken only when no request waits: requests wait for at most
the run in progress, not for the queued runs of long jobs.

Tracing (service/observe/tracing.py) sets TRACED to a Traced record in a traced request's context; each batch
that serves it adds a BatchRun to the record, from which the request's stage spans are made after it is
answered. Untraced, a request costs one context variable read at submit.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from rnnserve.service.core.errors import ModelClosed, Overloaded

log = logging.getLogger("rnnserve.batcher")


@dataclass(slots=True)
class BatchRun:
    """One batch run as traced requests see it: the batcher's name (MODEL/VERSION), its rows, when it started
    and ended (time.monotonic()), the runtime's times for it (BatchTimes, or None) and the Traced record of every
    traced request it served (a batch span links them)."""

    name: str
    size: int
    started: float
    ended: float
    times: object
    traced: list[Traced]
    spanned: bool = False  # its batch span has been made (by the first request to end)


@dataclass(slots=True)
class Traced:
    """A traced request's record: its span's context (opaque here), and per batch that served it (its rows,
    when it queued, the run)."""

    context: object
    runs: list[tuple[int, float, BatchRun]] = field(default_factory=list)


TRACED: ContextVar[Traced | None] = ContextVar("rnnserve_traced", default=None)


@dataclass
class _Item:
    rows: list
    future: asyncio.Future
    key: tuple[int, int]  # (0 for a request | 1 for background, arrival number): the queue's order
    enqueued: float = field(default_factory=time.monotonic)
    traced: Traced | None = None


BatchObserver = Callable[[int, list[float]], None]  # (a batch's rows, each of its requests' queue wait in seconds)


class BatchSizeMismatch(RuntimeError):
    pass


class Batcher:
    """Coalesces `submit(rows)` calls into `run_batch(list)` calls of at most max_batch_size rows, run one at a
    time in a worker thread; run_batch's result must be sliceable by row and as long as its input. Raises
    Overloaded when max_queue requests wait, ModelClosed after close()."""

    def __init__(self, run_batch: Callable[[list], Any], max_batch_size: int = 64, max_delay_s: float = 0.0,
                 max_queue: int = 2048, observer: BatchObserver | None = None, name: str = "model",
                 times: Callable[[], object] | None = None):
        self._run_batch = run_batch
        self._times = times  # the last run's times (the runtime's BatchTimes), for traced requests
        self.max_batch_size = max_batch_size
        self.max_delay_s = max_delay_s
        # (item.key, item): requests first, each kind in arrival order
        self._queue: asyncio.PriorityQueue[tuple[tuple[int, int], _Item]] = asyncio.PriorityQueue(maxsize=max_queue)
        self._arrivals = itertools.count()
        self._observer = observer
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"infer-{name}")
        self._task: asyncio.Task | None = None
        self._carry: _Item | None = None  # an item that did not fit the previous batch
        self._batch: list[_Item] = []  # the batch being run
        self._busy = False  # a batch is being collected or run
        self._closed = False
        self.name = name

    async def submit(self, rows: list, background: bool = False) -> Any:
        """Rows -> run_batch's result for exactly these rows. Raises Overloaded when the queue is full, and
        ModelClosed once close() has stopped the batcher (nothing would ever take the rows). Background rows
        wait until no other request is queued."""
        if self._closed:
            raise ModelClosed(f"model {self.name!r} is shutting down")
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop(), name=f"batcher-{self.name}")
        item = _Item(rows, asyncio.get_running_loop().create_future(), (int(background), next(self._arrivals)),
                     traced=TRACED.get())
        try:
            self._queue.put_nowait((item.key, item))
        except asyncio.QueueFull:
            raise Overloaded(f"model {self.name!r} queue is full ({self._queue.maxsize} requests); "
                             "retry later") from None
        return await item.future

    async def _next_batch(self) -> list[_Item]:
        first = self._carry or (await self._queue.get())[1]
        self._carry = None
        self._busy = True
        batch, rows = [first], len(first.rows)
        deadline = time.monotonic() + self.max_delay_s
        while rows < self.max_batch_size:
            try:
                item = self._queue.get_nowait()[1]
            except asyncio.QueueEmpty:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    item = (await asyncio.wait_for(self._queue.get(), remaining))[1]
                except TimeoutError:
                    break
            if rows + len(item.rows) > self.max_batch_size:
                if item.key[0]:  # background: back in its place, so requests that come meanwhile go first
                    self._queue.put_nowait((item.key, item))
                else:
                    self._carry = item
                break
            batch.append(item)
            rows += len(item.rows)
        return batch

    async def _loop(self) -> None:
        while True:
            batch = [it for it in await self._next_batch() if not it.future.done()]  # skip callers that gave up
            self._batch = batch
            try:
                if batch:
                    await self._run(batch)
            except Exception as exc:  # a bug outside one batch's run: fail its callers, never the loop
                log.exception("batcher error", extra={"model": self.name})
                _fail(batch, exc)
            finally:
                self._busy = False

    async def _run(self, batch: list[_Item]) -> None:
        started = time.monotonic()
        rows = [r for it in batch for r in it.rows]
        try:
            out = await self._call(rows)
        except Exception as exc:
            if len(batch) == 1:
                log.exception("batch failed", extra={"model": self.name, "rows": len(rows)})
                _fail(batch, exc)
                return
            # One bad request must not fail its neighbours: run each alone, so only the bad one fails.
            for it in batch:
                await self._run([it])
            return
        if self._observer:
            self._observer(len(rows), [started - it.enqueued for it in batch])
        traced = [(it, it.traced) for it in batch if it.traced is not None]
        if traced:
            run = BatchRun(self.name, len(rows), started, time.monotonic(), self._times() if self._times else None,
                           [record for _, record in traced])
            for it, record in traced:
                record.runs.append((len(it.rows), it.enqueued, run))
        offset = 0
        for it in batch:
            n = len(it.rows)
            if not it.future.done():
                it.future.set_result(out[offset:offset + n])
            offset += n

    async def _call(self, rows: list) -> Any:
        out = await asyncio.get_running_loop().run_in_executor(self._executor, self._run_batch, rows)
        if len(out) != len(rows):
            raise BatchSizeMismatch(f"model returned {len(out)} rows for {len(rows)} inputs")
        return out

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def queued(self) -> int:
        """Requests waiting for a batch (not the one being run)."""
        return self._queue.qsize() + (self._carry is not None)

    @property
    def idle(self) -> bool:
        return not (self._busy or self._carry or self._queue.qsize())

    async def close(self, grace_s: float = 0.0) -> None:
        """Stop the batcher: first let queued and running batches finish (up to grace_s seconds),
        then callers still waiting get an error. The worker thread ends after its batch. Requests that still
        reach this copy during the grace period (a reload swaps copies under them) are served; after it,
        they are refused at once."""
        deadline = time.monotonic() + grace_s
        while not self.idle and time.monotonic() < deadline:
            await asyncio.sleep(0.005)  # shutdown only: a short poll beats more state on the hot path
        self._closed = True
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        _fail(self._batch + ([self._carry] if self._carry else []) + _drain(self._queue),
              ModelClosed(f"model {self.name!r} is shutting down"))
        self.shutdown()

    def shutdown(self) -> None:
        """Stop the worker thread (after its current batch); for offline use, where no loop ran."""
        self._executor.shutdown(wait=True)


def _fail(items: list[_Item], exc: BaseException) -> None:
    for it in items:
        if not it.future.done():
            it.future.set_exception(exc)


def _drain(queue: asyncio.Queue) -> list[_Item]:
    items = []
    while not queue.empty():
        items.append(queue.get_nowait()[1])
    return items
