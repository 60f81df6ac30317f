"""SequenceModel: runs a numeric-sequence package (classification or regression, one output per sequence or
per step). Requests queue their sequences; the batcher stacks them, normalises them with the package's
statistics (service/core/sequences.py, as in training) and runs onnxruntime in its worker thread. A package
with a step-wise graph (`stepwise`, export's stepwise_sequences) also runs sequences step by step from a
carried state (`step`: the V2 sequence extension), on a batcher of its own: step rows carry their state.

    with SequenceModel.open("models/waves-next/1") as model:
        model.predict_batch(np.zeros((2, 10, 1), np.float32))   # [2, 1] values
"""

from __future__ import annotations

import functools

import numpy as np

from rnnserve.service.core.package import Task, check_io
from rnnserve.service.core.sequences import as_sequences, check_normalized, normalize
from rnnserve.service.runtime.base import ModelRuntime, RuntimeObserver, RuntimeOptions
from rnnserve.service.runtime.batcher import Batcher
from rnnserve.service.runtime.session import OrtSession


class SequenceModel(ModelRuntime):
    """Runs a numeric-sequence model: sequences float32 [N, T, F] -> class probabilities [N, C] or values
    [N, 1] / [N, T, 1]; with a step-wise graph, `step` runs one sequence of 1..T steps from a carried state."""

    tasks = (Task.SEQUENCE_CLASSIFICATION, Task.SEQUENCE_REGRESSION)

    def __init__(self, package, session: OrtSession, options: RuntimeOptions = RuntimeOptions(),
                 observer: RuntimeObserver | None = None):
        super().__init__(package, session, options, observer)
        meta = package.metadata
        self.stepwise, self.steps = None, None
        if meta.stepwise:
            self.stepwise = OrtSession(package.read(meta.stepwise), options.provider, options.intra_op_threads,
                                       meta.input.name, meta.output.name,
                                       label=f"{package.name}/{package.version}/{meta.stepwise}")
            check_io(package, self.stepwise.inputs(), self.stepwise.outputs(), stepwise=True)
            timed = functools.partial(self._timed_run, run=self._run_steps, session=self.stepwise)
            self.steps = Batcher(timed if observer else self._run_steps, max_batch_size=self.batcher.max_batch_size,
                                 max_delay_s=self.batcher.max_delay_s, max_queue=options.max_queue,
                                 observer=functools.partial(self._batch_done, session=self.stepwise)
                                 if observer else None,
                                 name=f"{self.name}/{self.version}/steps")

    @property
    def stateful(self) -> bool:
        return self.stepwise is not None

    @property
    def shape(self) -> tuple[int, int]:
        """[T, F]: steps and features per step."""
        steps, features = self.package.metadata.input.shape[1:]
        return steps, features

    @property
    def per_step(self) -> bool:
        return len(self.package.metadata.output.shape) == 3

    def check(self, warm_up: bool) -> None:
        if warm_up:
            self.session.warm_up(np.zeros((1, *self.shape), np.float32), self.warm_up_sizes)

    def run_batch(self, rows: list[np.ndarray]) -> np.ndarray:
        """Stacked, normalised and run: class probabilities [N, C], or values [N, 1] / [N, T, 1]."""
        x = normalize(np.stack(rows), self.package.metadata.input.normalization)
        return self.session.run(x)

    def as_input(self, values, steps: int | None = None) -> np.ndarray:
        """A request's nested lists -> float32 [N, T, F] (T: the model's, or `steps`), or InvalidInput naming
        the shape this model takes, or the value its normalisation would take beyond float32's range."""
        x = as_sequences(values, steps or self.shape[0], self.shape[1])
        check_normalized(x, self.package.metadata.input.normalization)
        return x

    async def _step(self, row: np.ndarray, state: list[np.ndarray] | None) -> tuple[np.ndarray, list[np.ndarray]]:
        assert self.steps is not None  # check_step refused models without a step-wise graph (not stateful)
        (out, state), = await self.steps.submit([(row, self.zero_state() if state is None else state)])
        return out[None], state

    def _run_steps(self, rows: list[tuple[np.ndarray, list[np.ndarray]]]) -> list:
        """Rows of (sequence [T, F], states [1, H] each) -> (output row, states after it) each; rows of equal
        length share one run of the step-wise graph."""
        meta = self.package.metadata
        assert self.stepwise is not None
        return self.stepwise.run_steps(rows, meta.input.name, meta.output.name, meta.state,
                                       lambda x: normalize(x, meta.input.normalization))

    async def close(self, grace_s: float = 0.0) -> None:
        if self.steps is not None:
            await self.steps.close(grace_s)
        await super().close(grace_s)

    def __exit__(self, *exc) -> None:
        if self.steps is not None:
            self.steps.shutdown()
        super().__exit__(*exc)
