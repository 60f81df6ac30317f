"""`--models-dir s3://BUCKET/PREFIX` (or gs://, az://): a training command writes its package in a local folder
as it would on disk, then uploads it whole, manifest.json last (service/store/client.py), so a server polling
the bucket never sees a version without its files. A local --models-dir is used as it is."""

from __future__ import annotations

import contextlib
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from rnnserve.service.core.package import MANIFEST
from rnnserve.service.store import EXTRA_HINT, StoreError, is_store_url


class PublishError(Exception):
    """The bucket could not be written, or holds the version already (without --overwrite): one sentence."""


def check_published(models_dir: str, name: str, version: int, overwrite: bool) -> None:
    """For a bucket URL, PublishError when NAME/VERSION is there already (its manifest is) and overwrite is
    off, or the store cannot be read: checked before the slow work. Nothing for a local folder."""
    if not is_store_url(models_dir) or overwrite:
        return
    with _store(models_dir) as (store, client):
        try:
            client.read_object(store, f"{name}/{version}/{MANIFEST}", models_dir)
        except FileNotFoundError:
            return
    raise PublishError(f"{shown(models_dir, name, version)} exists; pass --overwrite or a new --version")


@contextlib.contextmanager
def models_target(models_dir: str, name: str, version: int, overwrite: bool) -> Iterator[Path]:
    """The folder a command writes MODELS/NAME/VERSION into: models_dir itself, or for a bucket URL a temporary
    folder whose package is uploaded when the block ends without an error. PublishError."""
    if not is_store_url(models_dir):
        yield Path(models_dir)
        return
    check_published(models_dir, name, version, overwrite)
    with tempfile.TemporaryDirectory(prefix="rnnserve-publish-") as folder:
        yield Path(folder)
        with _store(models_dir) as (store, client):
            client.upload_package(store, client.describe(models_dir), Path(folder) / name / str(version),
                                  f"{name}/{version}", lambda file, size: print(f"uploaded {file} ({size} bytes)",
                                                                                file=sys.stderr))


def shown(models_dir: str, name: str, version: int) -> str:
    """Where the package is, for the user: the bucket URL's NAME/VERSION, or the local path."""
    if is_store_url(models_dir):
        return f"{models_dir.rstrip('/')}/{name}/{version}"
    return str(Path(models_dir) / name / str(version))


@contextlib.contextmanager
def _store(url: str):
    try:
        from rnnserve.service.store import client
    except ModuleNotFoundError as exc:
        if exc.name != "obstore":
            raise
        raise PublishError(EXTRA_HINT) from None
    try:
        yield client.open_store(url), client
    except StoreError as exc:
        raise PublishError(str(exc)) from None
