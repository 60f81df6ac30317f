"""A bucket's model versions as a local repository: downloaded whole, verified against their manifests, and only
then put where the registry reads. Nothing is ever served from the bucket itself.

The cache directory (one per server; its worker processes share it, a lock letting one sync at a time):

    lock                     flock: the process that syncs holds it
    state.json               {"listed_at", "versions": {"NAME/VERSION": {signature, digest, installed, reason}},
                              "retired": {digest: since}}
    staging/DIGEST/          a version being downloaded: complete files only (each written as .FILE.part, checked
                             against the manifest's size and sha256, then renamed), so a sync cut short resumes
    packages/DIGEST/         verified packages, named by the sha256 of their manifest.json
    repository/NAME/VERSION  a link to packages/DIGEST: the registry's models_dir (replaced atomically)
    repository/NAME/rollout.json  the bucket's NAME/rollout.json (service/rollout), copied as it is: a small
                             control file, not part of a package, checked when the server reads it

A sync lists the bucket (one listing of every object under the prefix). A version exists once its manifest.json
is there (writers upload it last). A version whose objects changed since the last sync (their sizes and ETags:
its `signature`) is downloaded again and verified: a file missing, added, of another size or another sha256
refuses it with the file named (`refused`, logged once per change), and the copy verified earlier, if any, keeps
serving. Versions gone from the bucket are unlinked (the registry's polling unloads them); packages no version
links to are deleted a grace period later, and the cache refuses a download past its byte limit.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from rnnserve.service.core.package import (
    MANIFEST,
    MAX_MANIFEST_BYTES,
    NAME_RE,
    VERSION_RE,
    Manifest,
    PackageError,
    parse_manifest,
    sha256_file,
)
from rnnserve.service.rollout.plan import FILE as ROLLOUT_FILE
from rnnserve.service.rollout.plan import MAX_FILE_BYTES as MAX_ROLLOUT_BYTES
from rnnserve.service.store import StoreError, StoreOptions
from rnnserve.service.store.client import ObjectStore, describe, list_objects, open_store, read_object, stream_object

log = logging.getLogger("rnnserve.store")
RETIRE_GRACE_S = 60.0  # a package no version links to any more stays this long (a worker may be reading it)


class CacheFull(PackageError):
    """A version does not fit in the cache's byte limit: refused now, tried again at every sync."""


@dataclass
class SyncResult:
    """What one sync left for this process: error (the store could not be listed or read: the sentence),
    refused (name -> version -> reason), changed (names whose verified copy of a version was replaced since
    this process's previous sync: the registry reloads them; new and removed versions it finds by itself)."""

    error: str | None = None
    refused: dict[str, dict[str, str]] = field(default_factory=dict)
    changed: set[str] = field(default_factory=set)


class Mirror:
    """The verified copy of the bucket at `url` in `cache_dir`; `repository` is the folder the registry reads.
    `sync` blocks (run it in a thread); call `prepare` once first."""

    def __init__(self, url: str, cache_dir: Path, options: StoreOptions, max_bytes: int):
        self.url, self.cache, self.options, self.max_bytes = url, cache_dir, options, max_bytes
        self.repository = cache_dir / "repository"
        self.where = describe(url, options)  # the store, in messages
        self._store: ObjectStore | None = None
        self._seen: dict[str, str] = {}  # "NAME/VERSION" -> the package this process last saw linked

    def prepare(self) -> None:
        """Make the cache's folders (mode 0700) and open the store (nothing is sent yet). StoreError for a cache
        folder that another user owns or others may write to (what is in it would be served), or a store
        configuration that cannot work."""
        self.cache.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = self.cache.stat()
        if info.st_uid != os.geteuid() or info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            raise StoreError(f"the model cache {self.cache} is owned by another user or writable by others: "
                             "refused, since what is in it would be served (set models_cache_dir)")
        for folder in ("repository", "packages", "staging"):
            (self.cache / folder).mkdir(mode=0o700, exist_ok=True)
        self._store = open_store(self.url, self.options)

    def sync(self, max_age_s: float = 0.0) -> SyncResult:
        """Bring the cache to the bucket's versions, unless another process of the server listed the bucket less
        than max_age_s ago (its result is then this one's too). Never raises for the store: `error` says."""
        with self._locked():
            state = self._read_state()
            error = None
            if time.time() - state["listed_at"] >= max_age_s:
                try:
                    self._mirror(state)
                    state["listed_at"] = time.time()
                except StoreError as exc:
                    error = str(exc)
                finally:
                    self._write_state(state)
        result = SyncResult(error=error)
        for key, entry in state["versions"].items():
            name, version = key.split("/")
            if entry["reason"]:
                result.refused.setdefault(name, {})[version] = entry["reason"]
            installed = entry["installed"]
            if installed and self._seen.get(key, installed) != installed:
                result.changed.add(name)
            if installed:
                self._seen[key] = installed
        return result

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with open(self.cache / "lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def _mirror(self, state: dict) -> None:
        assert self._store is not None, "Mirror.prepare() first"
        store, entries = self._store, state["versions"]
        listing = list_objects(store, self.where)
        listed = _versions(listing)
        for key, objects in sorted(listed.items()):
            signature = _signature(objects)
            entry = entries.get(key)
            if entry and entry["signature"] == signature and (
                    entry["reason"] or self._linked(key) == entry["installed"]):
                continue
            self._fetch(store, key, objects, signature, entries)
        self._mirror_rollouts(store, listing, state)
        for key in sorted(set(entries) - set(listed)):  # gone from the bucket (or its manifest is)
            (self.repository / key).unlink(missing_ok=True)
            with contextlib.suppress(OSError):  # the model's folder, once its last version went
                (self.repository / key).parent.rmdir()
            del entries[key]
            log.info("model version removed from the store", extra=_fields(key))
        self._collect_garbage(state)

    def _mirror_rollouts(self, store: ObjectStore, objects: list[dict], state: dict) -> None:
        """Each model's rollout file copied when it changed (its size and ETag), removed when it went."""
        seen: dict[str, str] = state.setdefault("rollouts", {})
        listed = {meta["path"].split("/")[0]: meta for meta in objects
                  if meta["path"].count("/") == 1 and meta["path"].endswith(f"/{ROLLOUT_FILE}")
                  and NAME_RE.fullmatch(meta["path"].split("/")[0])}
        for name, meta in sorted(listed.items()):
            signature = _signature({ROLLOUT_FILE: meta})
            if seen.get(name) == signature and (self.repository / name / ROLLOUT_FILE).is_file():
                continue
            if meta["size"] > MAX_ROLLOUT_BYTES:
                log.error("rollout file in the store is too large", extra={"model": name, "bytes": meta["size"]})
                continue
            try:
                raw = read_object(store, f"{name}/{ROLLOUT_FILE}", self.where)
            except FileNotFoundError:
                continue
            folder = self.repository / name
            folder.mkdir(mode=0o700, exist_ok=True)
            tmp = folder / f".{ROLLOUT_FILE}.part"
            tmp.write_bytes(raw)
            os.replace(tmp, folder / ROLLOUT_FILE)
            seen[name] = signature
        for name in sorted(set(seen) - set(listed)):
            (self.repository / name / ROLLOUT_FILE).unlink(missing_ok=True)
            del seen[name]

    def _fetch(self, store: ObjectStore, key: str, objects: dict[str, dict], signature: str,
               entries: dict[str, dict]) -> None:
        installed = self._linked(key)
        digest = None
        try:
            if objects[MANIFEST]["size"] > MAX_MANIFEST_BYTES:
                raise PackageError(f"{MANIFEST} is {objects[MANIFEST]['size']} bytes: no manifest is that large")
            raw = read_object(store, f"{key}/{MANIFEST}", self.where)
            digest = hashlib.sha256(raw).hexdigest()
            manifest = parse_manifest(raw)
            _check_listing(manifest, objects)
            self._check_space(manifest, digest)
            self._download(store, key, manifest, raw, digest)
        except FileNotFoundError:  # an object went between the listing and the read: the next sync sees why
            return
        except PackageError as exc:
            reason = str(exc) + ("; the copy verified earlier keeps serving" if installed else "")
            if entries.get(key, {}).get("reason") != reason:  # a full cache is tried at every sync: said once
                log.error("model version in the store refused", extra={**_fields(key), "reason": reason})
            entries[key] = {"signature": None if isinstance(exc, CacheFull) else signature, "digest": digest,
                            "installed": installed, "reason": reason}
            return
        self._link(key, digest)
        entries[key] = {"signature": signature, "digest": digest, "installed": digest, "reason": None}
        log.info("model version verified from the store", extra={**_fields(key), "digest": digest[:12]})

    def _download(self, store: ObjectStore, key: str, manifest: Manifest, raw: bytes, digest: str) -> None:
        """Every file of the version into staging/DIGEST, each checked against the manifest as it arrives; then
        the folder becomes packages/DIGEST. Files complete from an earlier, interrupted sync are kept when they
        still match (a file cut short is a .part file, dropped)."""
        stage, final = self.cache / "staging" / digest, self.cache / "packages" / digest
        stage.mkdir(mode=0o700, exist_ok=True)
        for part in stage.glob(".*.part"):
            part.unlink()
        for filename, entry in sorted(manifest.files.items()):
            target = stage / filename
            if target.is_file() and target.stat().st_size == entry.bytes and sha256_file(target) == entry.sha256:
                continue
            part = stage / f".{filename}.part"
            sha, size = hashlib.sha256(), 0
            with open(part, "wb") as fh:
                for chunk in stream_object(store, f"{key}/{filename}", self.where):
                    size += len(chunk)
                    if size > entry.bytes:
                        break
                    sha.update(chunk)
                    fh.write(chunk)
            if size != entry.bytes or sha.hexdigest() != entry.sha256:
                part.unlink()
                raise PackageError(f"{filename} was changed: its sha256 differs from {MANIFEST}'s")
            os.replace(part, target)
        (stage / MANIFEST).write_bytes(raw)
        if final.is_dir():  # the same package verified earlier (the bucket's copy was checked again)
            shutil.rmtree(stage)
        else:
            os.rename(stage, final)

    def _check_space(self, manifest: Manifest, digest: str) -> None:
        if (self.cache / "packages" / digest).is_dir():
            return
        staged = _bytes(self.cache / "staging" / digest)
        used = _bytes(self.cache / "packages") + _bytes(self.cache / "staging")
        needed = sum(entry.bytes for entry in manifest.files.values()) - staged
        if used + needed > self.max_bytes:
            raise CacheFull(f"the model cache is full: {needed} bytes more would pass models_cache_max_bytes "
                            f"({used} of {self.max_bytes} in use)")

    def _link(self, key: str, digest: str) -> None:
        """repository/NAME/VERSION -> packages/DIGEST, replaced in one step (a reader sees the old or the new)."""
        link = self.repository / key
        link.parent.mkdir(mode=0o700, exist_ok=True)
        tmp = link.parent / f".{link.name}.link"  # a dot-name: the registry's scan skips it
        tmp.unlink(missing_ok=True)
        os.symlink(Path("..") / ".." / "packages" / digest, tmp)  # relative: the cache may be moved whole
        os.replace(tmp, link)

    def _linked(self, key: str) -> str | None:
        """The package repository/NAME/VERSION links to, if it is there."""
        link = self.repository / key
        try:
            target = Path(os.readlink(link)).name
        except OSError:
            return None
        return target if (self.cache / "packages" / target).is_dir() else None

    def _collect_garbage(self, state: dict) -> None:
        entries, retired, now = state["versions"], state["retired"], time.time()
        linked = {entry["installed"] for entry in entries.values()}
        wanted = linked | {entry["digest"] for entry in entries.values()}
        for package in (self.cache / "packages").iterdir():
            if package.name in linked:
                retired.pop(package.name, None)
            elif now - retired.setdefault(package.name, now) > RETIRE_GRACE_S:
                shutil.rmtree(package)
                del retired[package.name]
        for stage in (self.cache / "staging").iterdir():
            if stage.name not in wanted:
                shutil.rmtree(stage)

    def _read_state(self) -> dict:
        try:
            state = json.loads((self.cache / "state.json").read_text())
        except (FileNotFoundError, ValueError):
            state = {}
        return {"listed_at": 0.0, "versions": {}, "retired": {}, "rollouts": {}, **state}

    def _write_state(self, state: dict) -> None:
        tmp = self.cache / f".state.{os.getpid()}.json"
        tmp.write_text(json.dumps(state))
        os.replace(tmp, self.cache / "state.json")


def _versions(objects: list[dict]) -> dict[str, dict[str, dict]]:
    """NAME/VERSION -> {file name (or deeper path) -> object}, for the versions whose manifest.json is there."""
    found: dict[str, dict[str, dict]] = {}
    for meta in objects:
        parts = meta["path"].split("/", 2)
        if len(parts) == 3 and NAME_RE.fullmatch(parts[0]) and VERSION_RE.fullmatch(parts[1]):
            found.setdefault(f"{parts[0]}/{parts[1]}", {})[parts[2]] = meta
    return {key: objects for key, objects in found.items() if MANIFEST in objects}


def _signature(objects: dict[str, dict]) -> str:
    """What changes when any object of a version does: names, sizes and ETags (else modification times)."""
    rows = sorted(f"{name}\0{meta['size']}\0{meta.get('e_tag') or meta['last_modified'].isoformat()}"
                  for name, meta in objects.items())
    return hashlib.sha256("\n".join(rows).encode()).hexdigest()


def _check_listing(manifest: Manifest, objects: dict[str, dict]) -> None:
    """The bucket holds exactly the manifest's files, of its sizes (the words of check_files on disk)."""
    present = {name: meta for name, meta in objects.items() if name != MANIFEST}
    added = sorted(set(present) - set(manifest.files))
    if added:
        raise PackageError(f"{added[0]} is not in {MANIFEST}: a file added to a package after it was written is "
                           "refused (write the package again, or remove the file)")
    for filename, entry in sorted(manifest.files.items()):
        if filename not in present:
            raise PackageError(f"missing {filename}: {MANIFEST} lists it (an upload cut short, or one that wrote "
                               "the manifest before the files)")
        if present[filename]["size"] != entry.bytes:
            raise PackageError(f"{filename} was changed: it is {present[filename]['size']} bytes, {MANIFEST} "
                               f"says {entry.bytes}")


def _bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else 0


def _fields(key: str) -> dict[str, str]:
    name, version = key.split("/")
    return {"model": name, "version": version}
