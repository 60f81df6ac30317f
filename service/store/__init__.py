"""A model repository in object storage: s3:// (and S3-compatible stores), gs:// and az:// URLs.

The server never reads a model from the bucket: `mirror.Mirror` copies each version whole into a local cache,
verifies it against its manifest, and only then puts it where the registry reads (docs/deployment.md, "Models
in a bucket"). `client` opens a store with each cloud's standard variables and files and uploads packages,
manifest last. Both need obstore (the `store` extra); this module does not, so the server and the training
commands can tell a URL from a path without it.
"""

from __future__ import annotations

import hashlib
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from rnnserve.service.store.mirror import Mirror

SCHEMES = ("s3", "gs", "az")  # Amazon S3 and S3-compatible stores, Google Cloud Storage, Azure Blob Storage
EXTRA_HINT = "a bucket URL needs the store extra: pip install 'rnnserve[store]'"


class StoreError(Exception):
    """A model store could not be opened, reached or read. The message is one sentence naming the store and
    the cause; it never holds a credential."""


@dataclass(frozen=True)
class StoreOptions:
    """How to reach a store beyond what its URL and the cloud's variables say. endpoint: an S3-compatible,
    Azure or GCS endpoint URL (MinIO, Ceph, Azurite, ...), '' for the variables' or the cloud's own; region:
    '' for the variables' (S3); tls_verify False accepts any certificate; ca_file: a PEM bundle trusted besides
    the system's; timeout_s: one request's limit, retries included, in seconds."""

    endpoint: str = ""
    region: str = ""
    tls_verify: bool = True
    ca_file: Path | None = None
    timeout_s: float = 30.0


def is_store_url(value: object) -> bool:
    """`value` names a bucket (s3://BUCKET/PREFIX, gs://BUCKET/PREFIX, az://CONTAINER/PREFIX), not a path."""
    if not isinstance(value, str) or "://" not in value:
        return False
    parts = urlsplit(value)
    return parts.scheme in SCHEMES and bool(parts.netloc)


def default_cache_dir(url: str) -> Path:
    """A server's cache for one bucket URL when none is set: one folder per URL under the temporary directory,
    so a restarted server finds its verified copies."""
    return Path(tempfile.gettempdir()) / f"rnnserve-cache-{hashlib.sha256(url.encode()).hexdigest()[:16]}"


def open_mirror(url: str, cache_dir: Path, options: StoreOptions, max_bytes: int) -> Mirror:
    """The bucket's mirror in cache_dir, its folders made and its store opened (nothing sent yet). StoreError for
    a cache folder that is not safe to serve from, a configuration that cannot work, or obstore missing."""
    try:
        from rnnserve.service.store.mirror import Mirror
    except ModuleNotFoundError as exc:
        if exc.name != "obstore":
            raise
        raise StoreError(EXTRA_HINT) from None
    mirror = Mirror(url, cache_dir, options, max_bytes)
    mirror.prepare()
    return mirror
