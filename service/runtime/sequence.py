"""SequenceModel: runs a numeric-sequence package (classification or regression, one output per sequence or
per step). Requests queue their sequences; the batcher stacks them, normalises them with the package's
statistics (service/core/sequences.py, as in training) and runs onnxruntime in its worker thread.

    with SequenceModel.open("models/waves-next/1") as model:
        model.predict_batch(np.zeros((2, 10, 1), np.float32))   # [2, 1] values
"""

from __future__ import annotations

import numpy as np

from rnnserve.service.core.package import Task
from rnnserve.service.core.sequences import as_sequences, normalize
from rnnserve.service.runtime.base import ModelRuntime


class SequenceModel(ModelRuntime):
    tasks = (Task.SEQUENCE_CLASSIFICATION, Task.SEQUENCE_REGRESSION)

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

    def as_input(self, values) -> np.ndarray:
        """A request's nested lists -> float32 [N, T, F], or InvalidInput naming the shape this model takes."""
        return as_sequences(values, *self.shape)
