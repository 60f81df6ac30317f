"""Model registry: names and versions of loaded model runtimes, loading, reloading and unloading.

A package that fails validation or loading is recorded with its reason; the others keep serving.
"""

from __future__ import annotations

import asyncio
import collections
import ctypes
import gc
import logging
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar, overload

from rnnserve.service.core.errors import ModelClosed, NotFound, NotReady, WrongTask, echo
from rnnserve.service.core.package import NAME_RE, VERSION_RE, PackageError, Serving, scan_repository
from rnnserve.service.cpus import usable_cpus
from rnnserve.service.metrics import Metrics
from rnnserve.service.runtime.base import ModelRuntime, RuntimeOptions
from rnnserve.service.runtime.loader import open_model
from rnnserve.service.runtime.session import shrink_shared_arena
from rnnserve.service.settings import Settings

log = logging.getLogger("rnnserve.registry")
T = TypeVar("T")
R = TypeVar("R", bound=ModelRuntime)


@dataclass
class Registry:
    """The server's models: every NAME/VERSION under the repository, loaded as runtimes. `get(name, version)`
    gives the current copy (NotFound 404, NotReady 503 while loading or when every version failed, WrongTask
    422 for an operation the task does not fit); `load`/`unload` change them without a restart, one at a time
    per name, a new copy validated and warmed before it replaces the old, which finishes what it was given."""

    settings: Settings
    metrics: Metrics
    models: dict[str, dict[int, ModelRuntime]] = field(default_factory=dict)
    failures: dict[str, dict[str, str]] = field(default_factory=dict)  # name -> version -> reason
    # A model store's versions refused before they reached the repository (service/store), name -> version ->
    # reason, and why the store could not be read at the last try (None: it could): set by note_store.
    refused: dict[str, dict[str, str]] = field(default_factory=dict)
    repository_error: str | None = None
    ready: bool = False  # the repository has been loaded once (readiness)
    overrides: dict[str, Serving] = field(default_factory=dict)  # name -> a load's batch settings (configure)
    # One load or unload per name at a time: concurrent ones for a name each built a copy, and the copies
    # they superseded were never closed (memory and threads leaked).
    _locks: dict[str, asyncio.Lock] = field(default_factory=lambda: collections.defaultdict(asyncio.Lock),
                                            init=False, repr=False)

    def configure(self, name: str, serving: Serving | None) -> None:
        """The batch settings a load's configuration gives every version of `name` from its next load on (None:
        the package's and the server's again)."""
        if serving is None:
            self.overrides.pop(name, None)
        else:
            self.overrides[name] = serving

    def options(self, name: str = "") -> RuntimeOptions:
        s = self.settings
        # Worker processes share the CPUs: each sizes its onnxruntime threads to its share.
        threads = s.intra_op_threads or max(1, usable_cpus() // s.worker_count())
        return RuntimeOptions(provider=s.provider, intra_op_threads=threads, max_batch_size=s.max_batch_size,
                              max_batch_delay_ms=s.max_batch_delay_ms,
                              max_queue=s.max_queue, warmup=s.warmup, serving=self.overrides.get(name))

    async def load_path(self, path: Path, install: bool = True) -> ModelRuntime | None:
        """Validate, load and warm one package; install=False leaves the swap to the caller."""
        name, version = path.parent.name, path.name
        try:
            model = await asyncio.to_thread(open_model, path, self.options(name),
                                            self.metrics.model_observer(name, version))
        except Exception as exc:  # noqa: BLE001 - any bad package is reported, never fatal
            reason = str(exc) if isinstance(exc, PackageError) else f"{type(exc).__name__}: {exc}"
            # onnxruntime's messages name the file: the repository's path is the server's business
            reason = reason.replace(f"{self.settings.models_dir.resolve()}/", "").replace(
                f"{self.settings.models_dir}/", "")
            log.error("model package failed to load", extra={"model": name, "version": version, "reason": reason})
            self.failures.setdefault(name, {})[version] = reason
            self._update_gauges()
            return None
        if install:
            self.models.setdefault(name, {})[model.version] = model
        self.failures.get(name, {}).pop(version, None)
        if not self.failures.get(name, True):
            del self.failures[name]
        self._update_gauges()
        log.info("model loaded", extra={"model": name, "version": version, "task": model.task,
                                        "provider": model.session.provider, "threads": model.session.threads})
        return model

    async def load_all(self, skip: frozenset[str] | set[str] = frozenset()) -> None:
        """Load every package in the repository but the names in `skip` (unloaded through the API)."""
        root = self.settings.models_dir
        if not root.is_dir():
            log.error("model repository does not exist", extra={"path": str(root)})
        for path in scan_repository(root):
            if path.parent.name not in skip:
                await self.load_path(path)
        self.ready = True
        _refreeze()
        loaded, failed = self.counts()
        log.info("model repository loaded", extra={"loaded": loaded, "failed": failed})

    async def load(self, name: str) -> None:
        """(Re)load every version of `name` on disk. Each new version is validated and warmed before it
        replaces the old one; requests already queued on the old one finish there. A version that fails
        keeps its old copy serving. Raises NotFound when nothing of that name is on disk."""
        self.check_name(name)
        async with self._locks[name]:
            await self._load(name)

    async def _load(self, name: str) -> None:
        paths = scan_repository(self.settings.models_dir / name, nested=False)
        if not paths:  # gone from disk: what was loaded or failed of it goes too
            if self.models.get(name) or name in self.failures:
                await self._unload(name)
            raise NotFound(f"no model {echo(name)} in the repository")  # the path is the server's business
        self.failures.pop(name, None)
        old = dict(self.models.get(name, {}))
        new = dict(old)
        for path in paths:
            loaded = await self.load_path(path, install=False)
            if loaded is not None:
                new[loaded.version] = loaded
        on_disk = {int(p.name) for p in paths if VERSION_RE.fullmatch(p.name)}
        new = {v: m for v, m in new.items() if v in on_disk}
        if new:
            self.models[name] = new
        else:
            self.models.pop(name, None)
        self._update_gauges()
        for version, handle in old.items():
            if new.get(version) is not handle:
                await handle.close(self.settings.shutdown_grace_s)
        _refreeze()
        if name in self.failures:
            reasons = "; ".join(f"v{v}: {r}" for v, r in self.failures[name].items())
            raise PackageError(f"model {echo(name)} did not load cleanly ({reasons})"
                               + ("; the previous version keeps serving" if new else ""))

    async def unload(self, name: str) -> None:
        self.check_name(name)
        async with self._locks[name]:
            await self._unload(name)

    async def _unload(self, name: str) -> None:
        versions = self.models.pop(name, None)
        failed = self.failures.pop(name, None)
        if versions is None:
            if failed is not None:  # only failed versions: forgetting them is the unload
                self._update_gauges()
                return
            raise NotFound(f"model {echo(name)} is not loaded")
        self._update_gauges()
        for handle in versions.values():
            await handle.close(self.settings.shutdown_grace_s)
        _refreeze()

    def on_disk(self) -> list[tuple[str, str]]:
        """(name, version) of every package directory in the repository, loaded or not."""
        return [(path.parent.name, path.name) for path in scan_repository(self.settings.models_dir)]

    @staticmethod
    def check_name(name: str) -> None:
        if not NAME_RE.fullmatch(name):
            raise NotFound(f"model {echo(name)} not found")

    def note_store(self, refused: dict[str, dict[str, str]], error: str | None) -> None:
        """What the last sync of a model store found (service/store): versions it refused, with the reason, and
        the sentence saying why it could not be read (None: it could), logged when it changes."""
        if error != self.repository_error:
            if error:
                log.error("model store unavailable", extra={"reason": error})
            else:
                log.info("model store available")
        self.refused, self.repository_error = refused, error
        self._update_gauges()

    def counts(self) -> tuple[int, int]:
        """Model versions loaded, and versions that failed to load (or a model store refused)."""
        return sum(map(len, self.models.values())), sum(len(self.failed(name)) for name in self.names())

    def knows(self, name: str) -> bool:
        """The name is in the repository as far as this registry has seen (loaded or failed)."""
        return name in self.models or name in self.failures

    def versions(self, name: str) -> dict[int, ModelRuntime]:
        """The loaded versions of a model (none if it is not loaded)."""
        return dict(self.models.get(name, {}))

    def failed(self, name: str) -> dict[str, str]:
        """Versions of a model that failed to load (or a model store refused), with the reason."""
        return {**self.refused.get(name, {}), **self.failures.get(name, {})}

    def _update_gauges(self) -> None:
        self.metrics.set_models(*self.counts())

    @overload
    def get(self, name: str, version: str | int | None = None) -> ModelRuntime: ...

    @overload
    def get(self, name: str, version: str | int | None, needs: type[R],
            hint: Callable[[ModelRuntime], str] | None = None) -> R: ...

    def get(self, name: str, version: str | int | None = None, needs: type[ModelRuntime] = ModelRuntime,
            hint: Callable[[ModelRuntime], str] | None = None) -> ModelRuntime:
        """The loaded model; WrongTask (422) unless its runtime is a `needs` (hint: how to use the model instead,
        in the caller's protocol)."""
        model = self._get(name, version)
        if not isinstance(model, needs):
            raise WrongTask(model.name, model.task, needs.tasks, hint(model) if hint else "")
        return model

    def _get(self, name: str, version: str | int | None = None) -> ModelRuntime:
        if not NAME_RE.fullmatch(name) or (version is not None and not VERSION_RE.fullmatch(str(version))):
            of = f" version {echo(version)}" if version is not None else ""
            raise NotFound(f"model {echo(name)}{of} not found")
        versions = self.models.get(name)
        if not versions:
            if failed := self.failed(name):
                reasons = "; ".join(f"v{v}: {r}" for v, r in failed.items())
                raise NotReady(f"model {echo(name)} is not available: {reasons}")
            if not self.ready:
                raise NotReady("models are still loading")
            raise NotFound(f"model {echo(name)} not found")
        if version is None:
            return versions[max(versions)]
        if int(version) not in versions:
            raise NotFound(f"model {echo(name)} has no loaded version {version}; loaded: {sorted(versions)}")
        return versions[int(version)]

    async def call(self, name: str, version: str | int | None, work: Callable[[R], Awaitable[T]],
                   needs: type[R] = ModelRuntime) -> tuple[R, T]:  # type: ignore[assignment]
        """Run work(model) on the current copy of a model version (a `needs`, as get). A request that reached a
        copy just as a reload replaced and closed it is run again on its successor, so reloads fail no request."""
        model = self.get(name, version, needs)
        try:
            return model, await work(model)
        except ModelClosed:
            model = self.get(name, version, needs)
            return model, await work(model)

    def names(self) -> list[str]:
        return sorted(set(self.models) | set(self.failures) | set(self.refused))

    async def close(self) -> None:
        for versions in self.models.values():
            for loaded in versions.values():
                await loaded.close(self.settings.shutdown_grace_s)


def _refreeze() -> None:
    """Keep the loaded models out of the garbage collector's sight. Their vocabularies are up to a million
    long-lived objects, and every full collection walked them all holding the GIL for tens of milliseconds,
    stalling requests; frozen, they are never walked. Unfrozen and collected first, so unloaded models'
    reference cycles are freed rather than frozen."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()
    shrink_shared_arena()  # the warm-ups' largest batches need not stay
    if _malloc_trim is not None:  # glibc keeps freed heap for reuse: give it back (20 MB after loading the bundled)
        _malloc_trim(0)


_malloc_trim = getattr(ctypes.CDLL(None), "malloc_trim", None) if sys.platform == "linux" else None
