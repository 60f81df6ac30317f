"""Model control for the whole server: load, unload and reload reach every worker process, and repository
polling loads what appears on disk.

With one worker (and in-process) a control call acts on the registry directly. With several, the server's
parent process makes a state directory (Settings.state_dir) that its workers share:

    desired.json       Desired: {"generation": G, "models": {name: {"op": "load" | "unload", "generation": g,
                       "serving": a load's batch settings or null}}}
    lock               taken (flock) to publish a change
                       "rollouts": {name: {"generation": g, "rollout": a Rollout, "file": the sha256 of
                       the model's rollout file when it was set, or null}}}
    workers/PID.json   WorkerStatus: what each worker has applied, {"generation": G, "results": {name:
                       {"generation", "error": {"status", "code", "message"} or null}}, "rollouts": {name:
                       {"generation"}}}

A control call publishes the change under the lock and waits until every live worker has applied it (each
reads desired.json every POLL_S and knows a change by its generation), then answers with their outcome: the
first error any of them met, or ControlTimeout (504) naming the workers that had not applied it within
`control_timeout_s`. A worker that starts later (a replacement for one that died) loads the repository as the
desired state says before it reports ready. No RPC layer: files, a lock and the processes' ids.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ValidationError

from rnnserve.service.core.errors import NotFound, ServiceError, StorageUnavailable, echo
from rnnserve.service.core.package import Serving
from rnnserve.service.processes import alive
from rnnserve.service.registry import Registry
from rnnserve.service.rollout.plan import Rollout, Rollouts
from rnnserve.service.store import open_mirror

log = logging.getLogger("rnnserve.control")
POLL_S = 0.05
STORE_RETRY_S = 5.0  # a model store not reached at start, with polling off: tried again this often


class ControlTimeout(ServiceError):
    status, code = 504, "control_timeout"


class Change(BaseModel):
    op: Literal["load", "unload"]
    generation: int
    serving: Serving | None = None  # a load's configuration (Triton's load with `config`)


class RolloutChange(BaseModel):
    generation: int
    rollout: Rollout
    file: str | None = None  # the sha256 of the model's rollout file it was made over (rollout/plan.py)


class Desired(BaseModel):
    generation: int = 0
    models: dict[str, Change] = {}
    rollouts: dict[str, RolloutChange] = {}

    def unloaded(self) -> set[str]:
        return {name for name, change in self.models.items() if change.op == "unload"}


class ErrorRecord(BaseModel):
    """A ServiceError as a worker met it, for the worker that answers the call."""

    status: int
    code: str
    message: str

    @classmethod
    def of(cls, exc: Exception) -> ErrorRecord:
        if isinstance(exc, ServiceError):
            return cls(status=exc.status, code=exc.code, message=exc.message)
        return cls(status=500, code="internal_error", message=f"{type(exc).__name__}: {exc}")

    def error(self) -> ServiceError:
        failure = ServiceError(self.message)
        failure.status, failure.code = self.status, self.code
        return failure


class Applied(BaseModel):
    generation: int
    error: ErrorRecord | None = None


class WorkerStatus(BaseModel):
    generation: int = 0
    results: dict[str, Applied] = {}
    rollouts: dict[str, Applied] = {}


class ModelControl:
    """Load, unload and repository polling for one worker: `start` after the registry exists, `close` at
    shutdown. `state_dir` None: a server of one process, where the registry is the whole truth."""

    def __init__(self, registry: Registry, state_dir: Path | None = None):
        self.registry, self.state_dir = registry, state_dir
        self.settings = registry.settings
        self.status = WorkerStatus()  # what this worker has applied
        self.rollouts = Rollouts()  # labels, canary and shadow by model (rollout/plan.py)
        self._on_disk: dict[str, set[str]] = {}  # name -> versions, at the last repository scan
        self._task: asyncio.Task | None = None
        self.problem: str | None = None  # why this worker's status could not be written (readiness says it)
        s = self.settings  # a model store: its verified copies in a cache (models_dir is its repository folder)
        self.mirror = (open_mirror(s.models_store, s.models_dir.parent, s.store_options(), s.models_cache_max_bytes)
                       if s.models_store else None)

    async def start(self) -> None:
        """Load the repository as the desired state says, say so, then follow changes in the background. A
        model store is synced first, and until it could be read (readiness says why meanwhile)."""
        await self._sync()
        while self.registry.repository_error is not None:
            await asyncio.sleep(self.settings.repository_poll_s or STORE_RETRY_S)
            await self._sync()
        desired = self._read_desired()
        for name, change in desired.models.items():
            self.registry.configure(name, change.serving)
        await self.registry.load_all(skip=desired.unloaded())
        self.rollouts.scan(self.settings.models_dir)
        for name, set_ in desired.rollouts.items():
            self.rollouts.api[name] = (set_.rollout, set_.file)
        self.status = WorkerStatus(generation=desired.generation,
                                   results={name: Applied(generation=change.generation)
                                            for name, change in desired.models.items()},
                                   rollouts={name: Applied(generation=set_.generation)
                                             for name, set_ in desired.rollouts.items()})
        self._on_disk = self._scan()
        self._write_status()
        if self.state_dir is not None or self.settings.repository_poll_s:
            self._task = asyncio.create_task(self._follow())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.state_dir is not None:
            self._status_path(os.getpid()).unlink(missing_ok=True)

    async def load(self, name: str, serving: Serving | None = None) -> None:
        """Load or reload `name` on every worker (Registry.load's errors, from whichever worker met one).
        serving: batch settings for every version of it, until the next load (None: the package's)."""
        await self._control(name, Change(op="load", generation=0, serving=serving))

    async def unload(self, name: str) -> None:
        """Unload `name` on every worker (a name whose versions all failed is forgotten); NotFound (404) when
        it is neither loaded nor failed here."""
        if not self.registry.knows(name):
            raise NotFound(f"model {echo(name)} is not loaded")
        await self._control(name, Change(op="unload", generation=0))

    async def _apply(self, name: str, change: Change) -> None:
        if change.op == "load":
            self.registry.configure(name, change.serving)
            await self.registry.load(name)
        elif self.registry.knows(name):
            await self.registry.unload(name)

    async def _control(self, name: str, change: Change) -> None:
        if change.op == "load":  # a model store's current versions first, as on disk
            await self._sync(max_age_s=0)
        if self.state_dir is None:
            if change.op == "unload":
                await self.registry.unload(name)
            else:
                await self._apply(name, change)
            return
        self.registry.check_name(name)
        if change.op == "load" and not (self.settings.models_dir / name).is_dir() and not self.registry.knows(name):
            raise NotFound(f"no model {echo(name)} in the repository")  # nothing to publish for every worker
        generation = await self._published(name, change.op, lambda desired, g: desired.models.__setitem__(
            name, change.model_copy(update={"generation": g})))
        statuses = await self._applied(name, change.op, generation, lambda status: status.results)
        for status in statuses.values():
            if (error := status.results[name].error) is not None:
                raise error.error()

    async def set_rollout(self, name: str, change: Callable[[Rollout], Rollout]) -> Rollout:
        """Change `name`'s rollout on every worker (change: the rollout in force -> the new one, raising
        ServiceErrors of its own): the new rollout, in force everywhere when this returns. It stands until the
        model's rollout file changes (rollout/plan.py). NotFound for a name neither loaded nor on disk."""
        self.registry.check_name(name)
        if not self.registry.knows(name) and not (self.settings.models_dir / name).is_dir():
            raise NotFound(f"no model {echo(name)} in the repository")
        self.rollouts.scan(self.settings.models_dir)  # the file's digest as it is now
        rollout = change(self.rollouts.get(name) or Rollout())
        digest = self.rollouts.file_digest(name)
        if self.state_dir is None:
            self.rollouts.api[name] = (rollout, digest)
            return rollout
        generation = await self._published(name, "rollout", lambda desired, g: desired.rollouts.__setitem__(
            name, RolloutChange(generation=g, rollout=rollout, file=digest)))
        await self._applied(name, "rollout", generation, lambda status: status.rollouts)
        return rollout

    async def _published(self, name: str, what: str, change: Callable[[Desired, int], None]) -> int:
        try:
            return await asyncio.to_thread(self._publish, change)
        except OSError as exc:
            log.error("model control could not publish a change", extra={"model": name, "reason": exc.strerror})
            raise StorageUnavailable(f"{what} of model {echo(name)}: the server's control state could not be "
                                     f"written ({exc.strerror or exc}); nothing was changed") from None

    async def _applied(self, name: str, what: str, generation: int,
                       table: Callable[[WorkerStatus], dict[str, Applied]]) -> dict[int, WorkerStatus]:
        """Every live worker's status once each has applied `generation` for `name` in `table` (ControlTimeout
        naming those that did not within control_timeout_s)."""
        deadline = time.monotonic() + self.settings.control_timeout_s
        while True:
            statuses = self._live_statuses()
            waiting = [pid for pid, status in statuses.items()
                       if table(status).get(name, Applied(generation=0)).generation < generation]
            if not waiting:
                return statuses
            if time.monotonic() > deadline:
                raise ControlTimeout(f"{what} of model {echo(name)}: worker(s) {sorted(waiting)} did not apply "
                                     f"it within {self.settings.control_timeout_s:g} s")
            await asyncio.sleep(POLL_S)

    @property
    def _shared(self) -> Path:
        """The workers' shared state directory (a server of several workers has one)."""
        assert self.state_dir is not None
        return self.state_dir

    def _publish(self, change: Callable[[Desired, int], None]) -> int:
        with open(self._shared / "lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            desired = self._read_desired()
            desired.generation += 1
            change(desired, desired.generation)
            _write(self._shared / "desired.json", desired)
        return desired.generation

    async def _follow(self) -> None:
        """Apply published changes as they come; scan the repository every repository_poll_s if set."""
        poll_s = self.settings.repository_poll_s
        next_scan = time.monotonic() + poll_s if poll_s else float("inf")
        while True:
            try:
                if self.state_dir is not None:
                    if self.problem is not None:
                        self._write_status()
                    await self._apply_changes()
                if time.monotonic() >= next_scan:
                    await self._apply_repository(await self._sync())
                    self.rollouts.scan(self.settings.models_dir)
                    next_scan = time.monotonic() + poll_s
            except Exception:  # noqa: BLE001 - the loop must outlive any one bad state file or package
                log.exception("model control step failed")
            await asyncio.sleep(POLL_S if self.state_dir is not None else poll_s)

    async def _apply_changes(self) -> None:
        # Read whole every time and judged by its generation: a file's (mtime, size) can stay the same across
        # two publishes (coarse timestamps, network and overlay file systems), its content cannot.
        desired = self._read_desired()
        if desired.generation == self.status.generation:
            return
        for name, change in sorted(desired.models.items(), key=lambda item: item[1].generation):
            if change.generation <= self.status.results.get(name, Applied(generation=0)).generation:
                continue
            error = None
            try:
                await self._apply(name, change)
            except Exception as exc:  # noqa: BLE001 - reported to the caller, never left unapplied
                error = ErrorRecord.of(exc)
            self.status.results[name] = Applied(generation=change.generation, error=error)
        for name, set_ in desired.rollouts.items():
            if set_.generation > self.status.rollouts.get(name, Applied(generation=0)).generation:
                self.rollouts.scan(self.settings.models_dir)  # the file as the caller saw it, not as at the last poll
                self.rollouts.api[name] = (set_.rollout, set_.file)
                self.status.rollouts[name] = Applied(generation=set_.generation)
        self.status.generation = desired.generation
        self._write_status()

    async def _apply_repository(self, changed: set[str] | frozenset[str] = frozenset()) -> None:
        """TF Serving's file-system polling: a name whose version directories changed (or in `changed`: a model
        store replaced a version's copy) is reloaded (a new version that validates serves, a removed one goes;
        one that fails is reported and the old keeps serving), a name whose directory went is unloaded. Names
        unloaded through the API stay unloaded."""
        now = await asyncio.to_thread(self._scan)
        unloaded = self._read_desired().unloaded()
        for name in sorted(set(now) | set(self._on_disk)):
            if (now.get(name) == self._on_disk.get(name) and name not in changed) or name in unloaded:
                continue
            try:
                if name in now:
                    await self.registry.load(name)
                elif self.registry.versions(name):
                    await self.registry.unload(name)
                log.info("repository change applied", extra={"model": name, "versions": sorted(now.get(name, []))})
            except ServiceError as exc:
                log.error("repository change failed", extra={"model": name, "reason": exc.message})
        self._on_disk = now

    async def _sync(self, max_age_s: float | None = None) -> set[str]:
        """A model store's versions into the cache the registry reads (service/store), what it found noted in the
        registry; the names whose verified copy of a version was replaced. Another worker's sync younger than
        half a poll period (or max_age_s) stands for this one's."""
        if self.mirror is None:
            return set()
        age = self.settings.repository_poll_s / 2 if max_age_s is None else max_age_s
        result = await asyncio.to_thread(self.mirror.sync, age)
        self.registry.note_store(result.refused, result.error)
        return result.changed

    def _scan(self) -> dict[str, set[str]]:
        found: dict[str, set[str]] = {}
        for name, version in self.registry.on_disk():
            found.setdefault(name, set()).add(version)
        return found

    def _read_desired(self) -> Desired:
        if self.state_dir is None:
            return Desired()
        try:
            return Desired.model_validate_json((self._shared / "desired.json").read_bytes())
        except FileNotFoundError:
            return Desired()

    def _status_path(self, pid: int) -> Path:
        return self._shared / "workers" / f"{pid}.json"

    def _write_status(self) -> None:
        """This worker's status for the control calls that wait on it. A write that fails (a full or read-only
        disk) is logged, said in readiness and tried again at the next poll; the worker goes on serving."""
        if self.state_dir is None:
            return
        try:
            (self._shared / "workers").mkdir(exist_ok=True)
            _write(self._status_path(os.getpid()), self.status)
        except OSError as exc:
            if self.problem is None:
                log.error("model control could not write this worker's status", extra={"reason": exc.strerror})
            self.problem = f"the model control state could not be written: {exc.strerror or exc}"
            return
        if self.problem is not None:
            log.info("model control state written again")
        self.problem = None

    def _live_statuses(self) -> dict[int, WorkerStatus]:
        """Every live worker's status; the files of workers that died are removed."""
        statuses = {}
        for path in (self._shared / "workers").glob("*.json"):
            pid = int(path.stem)
            if not alive(pid):
                path.unlink(missing_ok=True)
                continue
            with contextlib.suppress(FileNotFoundError, ValidationError):
                statuses[pid] = WorkerStatus.model_validate_json(path.read_bytes())
        return statuses


def _write(path: Path, data: BaseModel) -> None:
    """Whole or not at all: readers never see half a file, and no temporary file is left."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(data.model_dump_json())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
