"""The V2 sequence extension's state: the hidden state of each open sequence, held by the server between its
requests (Triton's implicit state management), for runtimes that carry state (`ModelRuntime.stateful`).

One file a sequence, under a directory every worker process shares (the server's state directory; a private
one with a single process), so a sequence's steps may reach any worker: HTTP clients need no routing, and
a gRPC stream, which stays on one worker, works the same. A step reads the state, runs the model from it
through the batcher and writes the state after it (atomically: a new file renamed over the old). Within a
process, a sequence's steps run one at a time in arrival order; across processes a client sends a step after
the previous one's answer, as tritonclient does.

Lifetime: sequence_start makes a sequence (from zero state; one that is open starts over), sequence_end
removes it after its step; a sequence idle past idle_s is gone, and starting one when max_sequences of a
model version are open evicts the least recently used. A step of a sequence that is not open is refused
(BadRequest) with the reasons it may have gone.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import tempfile
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rnnserve.service.core.errors import BadRequest, echo
from rnnserve.service.runtime.base import ModelRuntime


@dataclass(frozen=True)
class SequenceStep:
    """A request's sequence parameters: its id (a non-zero integer or a non-empty string) and flags."""

    id: int | str
    start: bool = False
    end: bool = False


class SequenceStates:
    """The open sequences of every model version, in files under `directory`."""

    def __init__(self, directory: Path, idle_s: float, max_sequences: int):
        self.directory, self.idle_s, self.max_sequences = directory, idle_s, max_sequences
        self._locks: weakref.WeakValueDictionary[Path, asyncio.Lock] = weakref.WeakValueDictionary()

    async def step(self, model: ModelRuntime, sequence: SequenceStep, rows: Sequence) -> Any:
        """Run rows (one input) as the sequence's next step: from its state (zero at its start), the state
        after the step kept unless it ends. The model's result for the step. BadRequest for a step of a
        sequence that is not open."""
        model.check_step(rows)
        path = self._path(model, sequence.id)
        lock = self._locks.get(path)
        if lock is None:
            lock = self._locks[path] = asyncio.Lock()
        async with lock:
            state = None
            if not sequence.start:
                state = await asyncio.to_thread(self._read, path)
                if state is None:
                    raise BadRequest(
                        f"sequence {echo(sequence.id)} of model {echo(model.name)} is not open: a sequence's first "
                        f"request has sequence_start true. It may have ended (sequence_end), been idle past "
                        f"{self.idle_s:g} s (SEQUENCE_IDLE_S) or been evicted as the least recently used of "
                        f"{self.max_sequences} (MAX_SEQUENCES)")
            out, state = await model.step(rows, state)  # a step the model refuses changes nothing here
            if sequence.end:
                await asyncio.to_thread(path.unlink, True)
            else:
                if sequence.start:
                    await asyncio.to_thread(self._make_room, path)
                await asyncio.to_thread(self._write, path, state)
        return out

    def _path(self, model: ModelRuntime, sequence_id: int | str) -> Path:
        # The id's type is part of it (42 and "42" are two sequences); hashed, any string makes a file name.
        digest = hashlib.sha256(f"{type(sequence_id).__name__}:{sequence_id}".encode()).hexdigest()[:32]
        return self.directory / model.name / str(model.version) / f"{digest}.npy"

    def _read(self, path: Path) -> list[np.ndarray] | None:
        try:
            if time.time() - path.stat().st_mtime > self.idle_s:
                path.unlink(missing_ok=True)
                return None
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        arrays, buffer = [], io.BytesIO(data)
        while buffer.tell() < len(data):
            arrays.append(np.lib.format.read_array(buffer, allow_pickle=False))
        return arrays

    def _write(self, path: Path, state: list[np.ndarray]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        with os.fdopen(fd, "wb") as fh:  # the arrays one after another in NumPy's .npy format
            for array in state:
                np.lib.format.write_array(fh, array, allow_pickle=False)
        os.replace(tmp, path)

    def _make_room(self, path: Path) -> None:
        """Before the sequence at `path` opens: drop its version's idle sequences, then the least recently used
        while max_sequences others are open (a sequence starting over takes no more room)."""
        now = time.time()
        open_ = []
        for entry in os.scandir(path.parent) if path.parent.is_dir() else ():
            if not entry.name.endswith(".npy") or entry.name == path.name:
                continue
            try:
                used = entry.stat().st_mtime
            except FileNotFoundError:  # ended meanwhile (another worker)
                continue
            if now - used > self.idle_s:
                Path(entry.path).unlink(missing_ok=True)
            else:
                open_.append((used, entry.path))
        open_.sort()
        for _, victim in open_[:max(0, len(open_) - self.max_sequences + 1)]:
            Path(victim).unlink(missing_ok=True)
