"""The runtime contract: one object runs one model package. ModelRuntime holds what every task's runtime
shares (package, onnxruntime session, batcher, warm-up, describe, close); TextClassifier (text.py) runs text
classifiers, SequenceModel (sequence.py) numeric-sequence models and TextGenerator (generator.py) character
language models. `open_model` (loader.py) picks one by the package's task.

The HTTP server, `rnnserve-score` and every engine open packages through them, so they all give the same
answers.
"""

from __future__ import annotations

import asyncio
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, Self

import numpy as np

from rnnserve.service.core.errors import InvalidInput, echo
from rnnserve.service.core.package import Package, PackageError, Serving, check_io, read_package
from rnnserve.service.runtime.batcher import Batcher
from rnnserve.service.runtime.session import OrtSession
from rnnserve.service.runtime.stepper import Stepper


@dataclass(frozen=True)
class RuntimeOptions:
    """How to run a package. The batch settings: `serving` (a load's configuration) over the package's metadata
    "serving" section over max_batch_size and max_batch_delay_ms."""

    provider: str = "auto"  # auto | cpu | cuda
    intra_op_threads: int = 0  # 0: the CPUs this process may use
    max_batch_size: int = 64
    max_batch_delay_ms: float = 0.0
    max_queue: int = 2048
    warmup: bool = True
    serving: Serving | None = None


@dataclass(frozen=True)
class BatchTimes:
    """One batch's run in seconds, split as the V2 statistics extension splits it: compute_input (making the
    model's inputs: tokenizing), compute_infer (onnxruntime's runs), compute_output (making the results)."""

    compute_input: float
    compute_infer: float
    compute_output: float


class RuntimeObserver(Protocol):
    """What a runtime reports as it serves (service/metrics.py records it for /metrics and the statistics)."""

    def batch(self, rows: int, waits: list[float], times: BatchTimes) -> None:
        """One batch run: its inputs, the queue wait of each request in it (seconds), its times."""

    def request(self, ok: bool, seconds: float) -> None:
        """One predict() call, succeeded or failed, and its seconds from call to answer."""


class ModelRuntime(ABC):
    """One package, its onnxruntime session and its batcher. The contract every task's runtime keeps:
    `run_batch(rows)` runs a list of inputs (texts, sequences [T, F], generation steps) in one onnxruntime run
    and returns a result sliceable by row; `predict(rows)` and `predict_batch(rows)` run any number of them in
    runs of max_batch_size (through the batcher, or here and now) and give one result in input order.
    Protocols (service/http/codecs.py) turn requests into rows and results into answers; they never ask
    what task a model is."""

    tasks: tuple[str, ...] = ()  # the package tasks this runtime runs
    stepper: Stepper | None = None  # a step-wise graph: runs a sequence step by step, its state carried (`step`)

    def __init__(self, package: Package, session: OrtSession, options: RuntimeOptions = RuntimeOptions(),
                 observer: RuntimeObserver | None = None):
        self.package, self.session, self.observer = package, session, observer
        layers = (options.serving or Serving(), package.metadata.serving)
        batch = next((s.max_batch_size for s in layers if s.max_batch_size is not None), options.max_batch_size)
        delay_ms = next((s.max_batch_delay_ms for s in layers if s.max_batch_delay_ms is not None),
                        options.max_batch_delay_ms)
        # The last batch's times, per batcher (each runs one batch at a time; a runtime may have two).
        self._times: dict[OrtSession, BatchTimes] = {}
        self.batcher = Batcher(self._timed_run if observer else self.run_batch,
                               max_batch_size=batch,
                               max_delay_s=delay_ms / 1000, max_queue=options.max_queue,
                               observer=self._batch_done if observer else None, name=f"{self.name}/{self.version}",
                               times=self._last_times if observer else None)

    @classmethod
    def open(cls, path: str | Path, options: RuntimeOptions = RuntimeOptions(),
             observer: RuntimeObserver | None = None) -> Self:
        """Validate the package, start its session, check it and warm it up. Raises PackageError with the
        reason."""
        return cls.start(read_package(Path(path)), options, observer)

    @classmethod
    def start(cls, package: Package, options: RuntimeOptions = RuntimeOptions(),
              observer: RuntimeObserver | None = None) -> Self:
        """open() for a package already read and validated."""
        if package.task not in cls.tasks:
            raise PackageError(f"{package.name} is a {package.task} package; {cls.__name__} runs "
                               f"{' and '.join(cls.tasks)} packages")
        session = OrtSession(package.read("model.onnx"), options.provider, options.intra_op_threads,
                             package.metadata.input.name, package.metadata.output.name,
                             label=f"{package.name}/{package.version}/model.onnx")
        check_io(package, session.inputs(), session.outputs())
        runtime = cls(package, session, options, observer)
        try:
            runtime.check(options.warmup)
        except BaseException:
            runtime.__exit__()
            raise
        return runtime

    @property
    def warm_up_sizes(self) -> tuple[int, ...]:
        """Batch sizes a warm-up runs: one request, and the largest batch this runtime forms."""
        return (1, self.batcher.max_batch_size)

    @abstractmethod
    def check(self, warm_up: bool) -> None:
        """Run the model once on inputs at the edge of what it will get (and warm it up); PackageError if it
        cannot take them."""

    @abstractmethod
    def run_batch(self, rows: list) -> Any:
        """Rows -> one result for them, sliceable by row and len(rows) long (the batcher's worker thread)."""

    def _timed_run(self, rows: list, run: Callable[[list], Any] | None = None,
                   session: OrtSession | None = None) -> Any:
        """run_batch (or `run` on `session`), its times kept for the observer: in onnxruntime's runs, after the
        last one, and the rest (before the first, and between runs: making their inputs)."""
        clock = (session or self.session).clock(reset=True)
        started = time.perf_counter()
        out = (run or self.run_batch)(rows)
        ended = time.perf_counter()
        output = ended - clock.last if clock.first is not None else 0.0
        self._times[session or self.session] = BatchTimes(ended - started - clock.seconds - output, clock.seconds,
                                                          output)
        return out

    def _last_times(self) -> BatchTimes | None:
        return self._times.get(self.session)

    def _make_stepper(self, session: OrtSession, options: RuntimeOptions,
                      prepare: Callable[[np.ndarray], np.ndarray] = lambda x: x) -> Stepper:
        """A Stepper over a step-wise graph of this package, batched as this runtime is, timed for its observer."""
        meta = self.package.metadata
        return Stepper(session, meta.input.name, meta.output.name, meta.state,
                       max_batch_size=self.batcher.max_batch_size, max_delay_s=self.batcher.max_delay_s,
                       max_queue=options.max_queue, name=f"{self.name}/{self.version}/steps", prepare=prepare,
                       timed=self._timed_run if self.observer else None,
                       observer=self._batch_done if self.observer else None)

    def _batch_done(self, rows: int, waits: list[float], session: OrtSession | None = None) -> None:
        assert self.observer is not None  # the batcher calls this only when there is one
        self.observer.batch(rows, waits, self._times[session or self.session])

    def concat(self, parts: list) -> Any:
        """Results of consecutive runs as one (numpy arrays by default)."""
        return np.concatenate(parts)

    def take(self, result: Any, rows: np.ndarray) -> Any:
        """The result's rows in the given order."""
        return result[rows]

    def order(self, rows: Sequence | np.ndarray) -> np.ndarray | None:
        """A better order to run rows in (None: as given); the result comes back in the given order."""
        return None

    def _runs(self, rows: Sequence | np.ndarray) -> tuple[list[Any], np.ndarray | None]:
        step = self.batcher.max_batch_size
        order = self.order(rows) if len(rows) > step else None
        if order is not None:
            rows = [rows[i] for i in order]
        return [rows[i:i + step] for i in range(0, len(rows), step)], order

    def _join(self, parts: list, order: np.ndarray | None) -> Any:
        out = parts[0] if len(parts) == 1 else self.concat(parts)
        if order is None:
            return out
        back = np.empty_like(order)
        back[order] = np.arange(len(order))
        return self.take(out, back)

    async def predict(self, rows: Sequence | np.ndarray) -> Any:
        """Rows through the batcher, in runs of at most max_batch_size coalesced with other callers' requests:
        one result in input order. Raises Overloaded when the queue is full, ModelClosed once closed."""
        return await self._counted(self._predict(rows))

    async def step(self, rows: Sequence | np.ndarray, state: list[np.ndarray] | None) -> tuple[Any, list[np.ndarray]]:
        """One input run from a carried state (None: the zero state): its result, as predict's, and the state
        after it. InvalidInput as check_step."""
        self.check_step(rows)
        return await self._counted(self._step(rows[0], state))

    def check_step(self, rows: Sequence | np.ndarray) -> None:
        """InvalidInput unless this runtime is stateful and rows are one input (a sequence's request)."""
        if not self.stateful:
            raise InvalidInput(f"model {echo(self.name)} keeps no state between requests: a {self.task} package "
                               "runs each request whole (no sequence_id)")
        if len(rows) != 1:
            raise InvalidInput(f"a sequence's request carries one input, not {len(rows)}")

    @property
    def stateful(self) -> bool:
        """Runs a sequence step by step, its state carried between steps (`step`)."""
        return self.stepper is not None

    async def _predict(self, rows: Sequence | np.ndarray) -> Any:
        runs, order = self._runs(rows)
        if len(runs) == 1:
            return await self.batcher.submit(runs[0])
        return self._join(await asyncio.gather(*(self.batcher.submit(r) for r in runs)), order)

    async def _step(self, row: Any, state: list[np.ndarray] | None) -> tuple[Any, list[np.ndarray]]:
        """One input from a state (None: zeros): its result (as predict's for [row]) and the state after it."""
        assert self.stepper is not None  # check_step refused runtimes without one
        out, after = await self.stepper.step(row, state)
        return out[None], after

    async def _counted(self, call: Awaitable) -> Any:
        """The call's result, counted as one request (succeeded or failed, and its seconds) for the observer."""
        started = time.perf_counter()
        try:
            out = await call
        except Exception:
            if self.observer:
                self.observer.request(False, time.perf_counter() - started)
            raise
        if self.observer:
            self.observer.request(True, time.perf_counter() - started)
        return out

    def predict_batch(self, rows: Sequence | np.ndarray) -> Any:
        """The same here and now, without the batcher (offline use: no event loop needed)."""
        runs, order = self._runs(rows)
        return self._join([self.run_batch(r) for r in runs], order)

    @property
    def name(self) -> str:
        return self.package.name

    @property
    def version(self) -> int:
        return self.package.version

    @property
    def labels(self) -> list[str]:
        return self.package.labels

    @property
    def task(self) -> str:
        return self.package.task

    async def close(self, grace_s: float = 0.0) -> None:
        """Let queued batches finish (up to grace_s), fail what is left, stop the worker threads."""
        if self.stepper is not None:
            await self.stepper.close(grace_s)
        await self.batcher.close(grace_s)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        if self.stepper is not None:
            self.stepper.shutdown()
        self.batcher.shutdown()
