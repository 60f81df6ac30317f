"""Stepper: a step-wise graph run from a carried state, behind a batcher of its own. Rows are (input [T, ...],
state: [1, H] per state pair); rows of equal T share one onnxruntime run. Stateful runtimes (a numeric model's
`stepwise` graph, a language model) step through it; their `run_batch` keeps taking predict's rows."""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np

from rnnserve.service.core.package import StateSpec
from rnnserve.service.runtime.batcher import Batcher
from rnnserve.service.runtime.session import OrtSession

State = list[np.ndarray]


class Stepper:
    """session: the step-wise graph; states: the package's state pairs; prepare: applied to each run's stacked
    inputs (a numeric model's normalisation). timed/observer: the runtime's timing hooks (or None)."""

    def __init__(self, session: OrtSession, input_name: str, output_name: str, states: list[StateSpec], *,
                 max_batch_size: int, max_delay_s: float, max_queue: int, name: str,
                 prepare: Callable[[np.ndarray], np.ndarray] = lambda x: x,
                 timed: Callable | None = None, observer: Callable | None = None):
        self.session, self.states = session, states
        self._run = functools.partial(session.run_steps, input_name=input_name, output_name=output_name,
                                      states=states, prepare=prepare)
        run = functools.partial(timed, run=self.run, session=session) if timed else self.run
        self.batcher = Batcher(run, max_batch_size=max_batch_size, max_delay_s=max_delay_s, max_queue=max_queue,
                               observer=functools.partial(observer, session=session) if observer else None,
                               name=name)

    def zero_state(self) -> State:
        """A sequence's state before its first step: zeros [1, H] for each state pair."""
        return [np.zeros((1, int(s["shape"][2] or 0)), np.float32) for s in self.states]

    def run(self, rows: list[tuple[np.ndarray, State]]) -> list[tuple[np.ndarray, State]]:
        """Rows -> (output row, state after it) each, here and now (the batcher's worker thread calls this)."""
        return self._run(rows)

    async def step(self, x: np.ndarray, state: State | None) -> tuple[np.ndarray, State]:
        """One row from a state (None: zeros) through the batcher: (output row, state after it)."""
        (out, after), = await self.batcher.submit([(x, self.zero_state() if state is None else state)])
        return out, after

    async def close(self, grace_s: float = 0.0) -> None:
        await self.batcher.close(grace_s)

    def shutdown(self) -> None:
        self.batcher.shutdown()
