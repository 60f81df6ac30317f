"""ServerState: what one worker process serves with, built once from its settings and handed to every protocol
(the HTTP app, the gRPC server, the V2 data plane): the settings, metrics, the model registry, model control,
the sequences' states and drift. `start` loads the models in the background; `close` stops what it started."""

from __future__ import annotations

import asyncio
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from rnnserve.service.control import ModelControl
from rnnserve.service.drift import Drift
from rnnserve.service.metrics import Metrics
from rnnserve.service.registry import Registry
from rnnserve.service.runtime.session import shrink_shared_arena
from rnnserve.service.runtime.states import SequenceStates
from rnnserve.service.settings import Settings

STATISTICS_FLUSH_S = 0.25  # how old another worker's figures in the statistics extension may be, at most
DRIFT_REFRESH_S = 1.0  # how old the drift scores may be, at most (shared and scored in the background)
ARENA_SHRINK_S = 5.0  # how long onnxruntime's shared arena may hold memory no run uses


@dataclass(frozen=True)
class ServerState:
    settings: Settings
    metrics: Metrics
    registry: Registry
    control: ModelControl
    sequences: SequenceStates
    drift: Drift
    # One process: its sequences in a directory of its own, removed at close.
    private: tempfile.TemporaryDirectory | None = None
    tasks: list[asyncio.Task] = field(default_factory=list)

    @classmethod
    def build(cls, settings: Settings) -> ServerState:
        """The state of one worker. settings.state_dir (set by the server's entry point for several workers):
        the directory the workers share for model control, metrics and sequences."""
        shared = settings.state_dir
        metrics = Metrics(str(shared / "metrics") if shared else None)
        registry = Registry(settings, metrics)
        private = None if shared else tempfile.TemporaryDirectory(prefix="rnnserve-sequences-")
        sequences = SequenceStates(Path(private.name if private else shared) / "sequences",  # type: ignore[arg-type]
                                   settings.sequence_idle_s, settings.max_sequences)
        drift = Drift(settings, metrics, registry, shared / "drift" if shared else None)
        return cls(settings, metrics, registry, ModelControl(registry, shared), sequences, drift, private)

    def start(self) -> asyncio.Task:
        """Load the repository in the background (liveness answers at once, readiness waits for the models) and
        flush the statistics every STATISTICS_FLUSH_S. The loading task is returned."""
        loading = asyncio.create_task(self.control.start())
        self.tasks[:] = [loading, asyncio.create_task(self.metrics.flush_every(STATISTICS_FLUSH_S)),
                         asyncio.create_task(shrink_every(ARENA_SHRINK_S)),
                         asyncio.create_task(self.drift.refresh_every(DRIFT_REFRESH_S))]
        return loading

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)  # the statistics' last flush
        await self.control.close()
        await self.registry.close()
        if self.private is not None:
            self.private.cleanup()

    def problems(self) -> list[str]:
        """What does not work (a model store not read at the last try, state that cannot be written), for
        readiness."""
        return [p for p in (self.registry.repository_error, self.control.problem, self.metrics.problem) if p]


async def shrink_every(seconds: float) -> None:
    """onnxruntime's shared arena, shrunk to what runs hold now every `seconds` (in a thread: it unmaps memory)."""
    while True:
        await asyncio.sleep(seconds)
        await asyncio.to_thread(shrink_shared_arena)
