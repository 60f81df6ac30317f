"""SequenceModel: runs a numeric-sequence package (classification or regression, one output per sequence or
per step). Requests queue their sequences; the batcher stacks them, normalises them with the package's
statistics (service/core/sequences.py, as in training) and runs onnxruntime in its worker thread. A package
with a step-wise graph (`stepwise`, export's stepwise_sequences) also runs sequences step by step from a
carried state (`step`: the V2 sequence extension), on a batcher of its own: step rows carry their state.

    with SequenceModel.open("models/waves-next/1") as model:
        model.predict_batch(np.zeros((2, 10, 1), np.float32))   # [2, 1] values
"""

from __future__ import annotations

import numpy as np

from rnnserve.service.core.package import Task, check_io
from rnnserve.service.core.sequences import as_sequences, check_normalized, normalize
from rnnserve.service.runtime.base import ModelRuntime, RuntimeObserver, RuntimeOptions
from rnnserve.service.runtime.session import OrtSession


class SequenceModel(ModelRuntime):
    """Runs a numeric-sequence model: sequences float32 [N, T, F] -> class probabilities [N, C] or values
    [N, 1] / [N, T, 1]; with a step-wise graph, `step` runs one sequence of 1..T steps from a carried state."""

    tasks = (Task.SEQUENCE_CLASSIFICATION, Task.SEQUENCE_REGRESSION)

    def __init__(self, package, session: OrtSession, options: RuntimeOptions = RuntimeOptions(),
                 observer: RuntimeObserver | None = None):
        super().__init__(package, session, options, observer)
        meta = package.metadata
        if meta.stepwise:
            stepwise = OrtSession(package.read(meta.stepwise), options.provider, options.intra_op_threads,
                                  meta.input.name, meta.output.name,
                                  label=f"{package.name}/{package.version}/{meta.stepwise}")
            check_io(package, stepwise.inputs(), stepwise.outputs(), stepwise=True)
            self.stepper = self._make_stepper(stepwise, options,
                                              lambda x: normalize(x, meta.input.normalization))

    @property
    def shape(self) -> tuple[int, int]:
        """[T, F]: steps and features per step."""
        steps, features = self.package.metadata.input.shape[1:]
        assert isinstance(steps, int) and isinstance(features, int)  # read_package checked them
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
