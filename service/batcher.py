"""Dynamic batching: coalesce concurrent requests into one model run. Knows nothing of text or HTTP.

Event-driven: wait for the first request, drain what is queued, and wait out the rest of max_delay only
while the batch is not full. One batch runs at a time in a worker thread, and the next one fills
meanwhile, so under load batches grow by themselves even with max_delay = 0.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from service.errors import Overloaded

log = logging.getLogger("rnnserve.batcher")


@dataclass
class _Item:
    rows: np.ndarray
    future: asyncio.Future
    enqueued: float = field(default_factory=time.monotonic)


BatchObserver = Callable[[int, list[float], float], None]  # (batch rows, queue waits, run seconds)


class BatchSizeMismatch(RuntimeError):
    pass


class Batcher:
    def __init__(self, run_batch: Callable[[np.ndarray], np.ndarray], max_batch_size: int = 64,
                 max_delay_s: float = 0.001, max_queue: int = 2048, observer: BatchObserver | None = None,
                 name: str = "model"):
        self._run_batch = run_batch
        self.max_batch_size = max_batch_size
        self.max_delay_s = max_delay_s
        self._queue: asyncio.Queue[_Item] = asyncio.Queue(maxsize=max_queue)
        self._observer = observer
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"infer-{name}")
        self._task: asyncio.Task | None = None
        self._carry: _Item | None = None  # an item that did not fit the previous batch
        self._busy = False  # a batch is being collected or run
        self.name = name

    @property
    def depth(self) -> int:
        return self._queue.qsize()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop(), name=f"batcher-{self.name}")

    async def submit(self, rows: np.ndarray) -> np.ndarray:
        """Rows [n, ...] -> model outputs [n, ...] for exactly these rows. Raises Overloaded when full."""
        if self._task is None:
            self.start()
        item = _Item(rows, asyncio.get_running_loop().create_future())
        try:
            self._queue.put_nowait(item)
        except asyncio.QueueFull:
            raise Overloaded(f"model {self.name!r} queue is full ({self._queue.maxsize} requests); retry later") from None
        return await item.future

    async def _next_batch(self) -> list[_Item]:
        first = self._carry or await self._queue.get()
        self._carry = None
        self._busy = True
        batch, rows = [first], len(first.rows)
        deadline = time.monotonic() + self.max_delay_s
        while rows < self.max_batch_size:
            try:
                item = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    item = await asyncio.wait_for(self._queue.get(), remaining)
                except TimeoutError:
                    break
            if rows + len(item.rows) > self.max_batch_size:
                self._carry = item
                break
            batch.append(item)
            rows += len(item.rows)
        return batch

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._next_batch()
            batch = [it for it in batch if not it.future.done()]  # callers that gave up
            if not batch:
                self._busy = False
                continue
            started = time.monotonic()
            waits = [started - it.enqueued for it in batch]
            try:
                x = batch[0].rows if len(batch) == 1 else _stack([it.rows for it in batch])
                out = await loop.run_in_executor(self._executor, self._run_batch, x)
                if len(out) != len(x):
                    raise BatchSizeMismatch(f"model returned {len(out)} rows for {len(x)} inputs")
            except Exception as exc:  # noqa: BLE001 - fail this batch's callers only, keep serving
                log.exception("batch failed", extra={"model": self.name, "rows": sum(len(i.rows) for i in batch)})
                for it in batch:
                    if not it.future.done():
                        it.future.set_exception(exc)
                self._busy = False
                continue
            if self._observer:
                self._observer(len(x), waits, time.monotonic() - started)
            offset = 0
            for it in batch:
                n = len(it.rows)
                if not it.future.done():
                    it.future.set_result(out[offset:offset + n])
                offset += n
            self._busy = False

    @property
    def idle(self) -> bool:
        return not (self._busy or self._carry or self._queue.qsize())

    async def close(self, grace_s: float = 0.0) -> None:
        """Stop the batcher: first let queued and running batches finish (up to grace_s seconds),
        then callers still waiting get an error. The worker thread ends after its batch."""
        deadline = time.monotonic() + grace_s
        while not self.idle and time.monotonic() < deadline:
            await asyncio.sleep(0.005)  # shutdown only: a short poll beats more state on the hot path
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        for it in ([self._carry] if self._carry else []) + _drain(self._queue):
            if not it.future.done():
                it.future.set_exception(Overloaded(f"model {self.name!r} is shutting down"))
        self._executor.shutdown(wait=True)


def _stack(parts: list[np.ndarray]) -> np.ndarray:
    """Concatenate row blocks; blocks narrower than the widest (dynamic-length models, whose rows
    are padded after their tokens) get zeros on the right."""
    width = max(p.shape[1] for p in parts)
    if all(p.shape[1] == width for p in parts):
        return np.concatenate(parts)
    out = np.zeros((sum(len(p) for p in parts), width), dtype=parts[0].dtype)
    offset = 0
    for p in parts:
        out[offset:offset + len(p), :p.shape[1]] = p
        offset += len(p)
    return out


def _drain(queue: asyncio.Queue) -> list[_Item]:
    items = []
    while not queue.empty():
        items.append(queue.get_nowait())
    return items
