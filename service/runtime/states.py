"""The V2 sequence extension's state: the hidden state of each open sequence, held by the server between its
requests (Triton's implicit state management), for runtimes that carry state (`ModelRuntime.stateful`).

One file a sequence, under a directory every worker process shares (the server's state directory; a private
one with a single process), so a sequence's steps may reach any worker: HTTP clients need no routing, and
a gRPC stream, which stays on one worker, works the same. A file holds the state and its generation (how many
steps made it). A step reads both, runs the model from the state through the batcher, then commits: under the
version directory's lock (flock, held for the write alone, never across the model's run) it writes the state
after the step with the next generation, if the file's generation is still the one it read. Otherwise another
worker committed a step of the same sequence meanwhile, and this one is refused (Conflict, 409 / ABORTED): a
step is answered and kept, or refused, never silently lost. Within a process a sequence's steps queue in
arrival order; across processes a client sends a step after the previous one's answer, as tritonclient does.

Lifetime: sequence_start makes a sequence (from zero state; one that is open starts over), sequence_end
removes it after its step; a sequence idle past idle_s is gone, and starting one when max_sequences of a
model version are open evicts the least recently used (under the same lock, so the limit holds exactly under
concurrent starts). A step of a sequence that is not open is refused (BadRequest) with the reasons it may
have gone. Storage that fails (a full or read-only disk) refuses the step (StorageUnavailable, 503 /
UNAVAILABLE) with the sequence's state as it was: the new state is written to a temporary file first, other
sequences are evicted only once it is written, and the temporary file is removed whatever happens.
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import io
import os
import tempfile
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rnnserve.service.core.errors import BadRequest, Conflict, StorageUnavailable, echo
from rnnserve.service.runtime.base import ModelRuntime

STALE_TMP_S = 60.0  # a temporary state file this old was left by a process that died mid-write


@dataclass(frozen=True)
class SequenceStep:
    """A request's sequence parameters: its id (a non-zero integer or a non-empty string) and flags."""

    id: int | str
    start: bool = False
    end: bool = False


@dataclass(frozen=True)
class Stored:
    """A sequence's file as read: its generation (0: no file) and state (None: none, or expired)."""

    generation: int
    state: list[np.ndarray] | None


class SequenceStates:
    """The open sequences of every model version, in files under `directory`. clock: seconds since the epoch
    (time.time; file modification times are compared with it)."""

    def __init__(self, directory: Path, idle_s: float, max_sequences: int, clock: Callable[[], float] = time.time):
        self.directory, self.idle_s, self.max_sequences, self.clock = directory, idle_s, max_sequences, clock
        self._locks: weakref.WeakValueDictionary[Path, asyncio.Lock] = weakref.WeakValueDictionary()

    async def step(self, model: ModelRuntime, sequence: SequenceStep, rows: Sequence | np.ndarray) -> Any:
        """Run rows (one input) as the sequence's next step: from its state (zero at its start), the state
        after the step kept unless it ends. The model's result for the step. BadRequest for a step of a
        sequence that is not open; Conflict when another worker stepped the sequence meanwhile;
        StorageUnavailable when the state cannot be read or stored."""
        model.check_step(rows)
        path = self._path(model, sequence.id)
        lock = self._locks.get(path)
        if lock is None:
            lock = self._locks[path] = asyncio.Lock()
        async with lock:
            stored = await asyncio.to_thread(self._storage(self._read), path)
            if not sequence.start and stored.state is None:
                raise BadRequest(
                    f"sequence {echo(sequence.id)} of model {echo(model.name)} is not open: a sequence's first "
                    f"request has sequence_start true. It may have ended (sequence_end), been idle past "
                    f"{self.idle_s:g} s (SEQUENCE_IDLE_S) or been evicted as the least recently used of "
                    f"{self.max_sequences} (MAX_SEQUENCES)")
            out, state = await model.step(rows, None if sequence.start else stored.state)  # a refusal changes nothing
            await asyncio.to_thread(self._storage(self._commit), path, sequence, stored.generation, state)
        return out

    def _path(self, model: ModelRuntime, sequence_id: int | str) -> Path:
        # The id's type is part of it (42 and "42" are two sequences); hashed, any string makes a file name.
        digest = hashlib.sha256(f"{type(sequence_id).__name__}:{sequence_id}".encode()).hexdigest()[:32]
        return self.directory / model.name / str(model.version) / f"{digest}.npy"

    @staticmethod
    def _storage(work: Callable) -> Callable:
        """work, with the file system's failures as StorageUnavailable (the reason said, no path)."""
        def run(*args):
            try:
                return work(*args)
            except OSError as exc:
                raise StorageUnavailable(f"the sequence state could not be stored: {exc.strerror or exc}; the "
                                       "sequence is as it was before this request") from None

        return run

    def _read(self, path: Path) -> Stored:
        try:
            data = path.read_bytes()
            used = path.stat().st_mtime
        except FileNotFoundError:
            return Stored(0, None)
        arrays, buffer = [], io.BytesIO(data)
        try:
            while buffer.tell() < len(data):
                arrays.append(np.lib.format.read_array(buffer, allow_pickle=False))
            generation = int(arrays[0][0])
        except (ValueError, IndexError):
            raise OSError("the state file is unreadable") from None
        expired = self.clock() - used > self.idle_s
        return Stored(generation, None if expired else arrays[1:])

    def _commit(self, path: Path, sequence: SequenceStep, read: int, state: list[np.ndarray]) -> None:
        """Keep the state after a step (or remove the sequence at its end) if the file is still at the
        generation the step read; Conflict otherwise."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = None
        try:
            if not sequence.end:
                tmp = self._write_tmp(path, read + 1, state)  # before the lock: a full disk fails here, alone
            with open(path.parent / ".lock", "a") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                now = self._generation(path)
                if now != read:
                    raise Conflict(f"sequence {echo(sequence.id)} was stepped by another request while this one "
                                   "ran, and this step was not kept: send a sequence's next step after the "
                                   "previous one's answer")
                if sequence.end:
                    path.unlink(missing_ok=True)
                    return
                if sequence.start:
                    self._make_room(path)
                assert tmp is not None
                os.replace(tmp, path)
                tmp = None
        finally:
            if tmp is not None:
                Path(tmp).unlink(missing_ok=True)

    def _write_tmp(self, path: Path, generation: int, state: list[np.ndarray]) -> str:
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as fh:  # the generation, then the state's arrays, in NumPy's .npy format
                for array in (np.array([generation], np.int64), *state):
                    np.lib.format.write_array(fh, array, allow_pickle=False)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return tmp

    def _generation(self, path: Path) -> int:
        """The generation of the sequence's file now (0: none), an expired one's included."""
        try:
            with open(path, "rb") as fh:
                return int(np.lib.format.read_array(fh, allow_pickle=False)[0])
        except FileNotFoundError:
            return 0

    def _make_room(self, path: Path) -> None:
        """Before the sequence at `path` opens (under the version's lock): drop its version's idle sequences
        and stale temporary files, then the least recently used while max_sequences others are open (a
        sequence starting over takes no more room)."""
        now = self.clock()
        open_ = []
        for entry in os.scandir(path.parent):
            try:
                used = entry.stat().st_mtime
            except FileNotFoundError:  # ended meanwhile (another worker)
                continue
            if entry.name.endswith(".tmp"):
                if now - used > STALE_TMP_S:
                    Path(entry.path).unlink(missing_ok=True)
            elif entry.name.endswith(".npy") and entry.name != path.name:
                if now - used > self.idle_s:
                    Path(entry.path).unlink(missing_ok=True)
                else:
                    open_.append((used, entry.path))
        open_.sort()
        for _, victim in open_[:max(0, len(open_) - self.max_sequences + 1)]:
            Path(victim).unlink(missing_ok=True)
