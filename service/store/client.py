"""Object stores through obstore: open one from a bucket URL and the cloud's standard variables and files, list
and read its objects, upload a package with its manifest last, and say in one sentence why a call failed.

Credentials come from where each cloud's own tools look, and are never logged:
- s3://: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN, AWS_REGION, AWS_ENDPOINT_URL(_S3), web
  identity (IRSA), container and instance credentials (obstore's chain); without keys in the environment, the
  profile AWS_PROFILE (else `default`) of the shared files AWS_SHARED_CREDENTIALS_FILE and AWS_CONFIG_FILE
  (~/.aws/credentials, ~/.aws/config): its static keys, region and endpoint_url;
- gs://: GOOGLE_APPLICATION_CREDENTIALS (a service account's key file), GOOGLE_SERVICE_ACCOUNT_KEY, or the
  instance's account;
- az://CONTAINER/PREFIX: AZURE_STORAGE_ACCOUNT_NAME with AZURE_STORAGE_ACCOUNT_KEY, AZURE_STORAGE_SAS_TOKEN, a
  service principal (AZURE_CLIENT_ID, ...) or workload identity; AZURE_STORAGE_USE_EMULATOR for Azurite.
"""

from __future__ import annotations

import configparser
import contextlib
import os
import re
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit

import obstore
from obstore.exceptions import BaseError, PermissionDeniedError, UnauthenticatedError
from obstore.store import ObjectStore, from_url

from rnnserve.service.core.package import MANIFEST
from rnnserve.service.store import StoreError, StoreOptions

__all__ = ["ObjectStore", "StoreError", "describe", "open_store", "list_objects", "read_object", "stream_object",
           "upload_package"]
RETRIES = 3  # obstore's default is 10 within 3 minutes: an unreachable store would keep readiness silent that long
CREDENTIAL_CODES = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "ExpiredToken",
                    "InvalidToken", "AuthenticationFailed", "AuthorizationFailure",
                    "AuthorizationPermissionMismatch", "InvalidAuthenticationInfo"}
MISSING_CODES = {"NoSuchBucket", "ContainerNotFound"}
# What lies behind obstore's "error sending request", in the words of its HTTP client.
UNREACHABLE = (("Connection refused", "connection refused"), ("dns error", "the host name does not resolve"),
               ("certificate", "its TLS certificate is not trusted (set store_ca_file, or store_tls_verify false)"),
               ("timed out", "timed out"), ("error sending request", "no answer"))


def open_store(url: str, options: StoreOptions = StoreOptions()) -> ObjectStore:
    """The store a bucket URL names, its path as the prefix of every key. StoreError for a URL or a
    configuration that cannot work (an unknown profile, one that needs an AWS SDK); nothing is sent yet."""
    scheme = urlsplit(url).scheme
    config: dict[str, str] = {}
    endpoint = options.endpoint or endpoint_of(scheme)
    if scheme == "s3":
        config = aws_profile() if "AWS_ACCESS_KEY_ID" not in os.environ else {}
        # The variables win over the profile, and the setting over both, as for the AWS CLI.
        endpoint = endpoint or config.get("endpoint", "")
        config.pop("endpoint", None)
        if os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION"):
            config.pop("region", None)
        if endpoint:
            config["endpoint"] = endpoint
        if options.region:
            config["region"] = options.region
    elif options.endpoint:
        config["base_url" if scheme == "gs" else "endpoint"] = options.endpoint
    client: dict = {"timeout": timedelta(seconds=options.timeout_s),
                    "connect_timeout": timedelta(seconds=min(5.0, options.timeout_s)),
                    # an http:// endpoint (a store inside the cluster, an emulator) is the user's explicit choice
                    "allow_http": endpoint.startswith("http://") or _true("AZURE_STORAGE_USE_EMULATOR"),
                    "allow_invalid_certificates": not options.tls_verify}
    if options.ca_file is not None:
        try:
            client["root_certificate"] = options.ca_file.read_text()
        except OSError as exc:
            raise StoreError(f"model store {url}: cannot read store_ca_file {options.ca_file}: "
                             f"{exc.strerror}") from None
    retry = {"max_retries": RETRIES, "retry_timeout": timedelta(seconds=options.timeout_s)}
    try:
        # one dict for the three clouds: obstore types each as its own TypedDict
        return from_url(url, config=config or None, client_options=client, retry_config=retry)  # type: ignore[call-overload]
    except (BaseError, ValueError) as exc:
        raise store_error(exc, describe(url, options)) from None


def describe(url: str, options: StoreOptions = StoreOptions()) -> str:
    """The store for messages: its URL and, when it is not the cloud's own, the endpoint (without any user
    name or password written into it)."""
    endpoint = options.endpoint or endpoint_of(urlsplit(url).scheme)
    if not endpoint and urlsplit(url).scheme == "s3" and "AWS_ACCESS_KEY_ID" not in os.environ:
        with contextlib.suppress(StoreError):
            endpoint = aws_profile().get("endpoint", "")
    parts = urlsplit(endpoint)
    if not parts.hostname:
        return url
    host = parts.hostname + (f":{parts.port}" if parts.port else "")
    return f"{url} at {parts._replace(netloc=host).geturl()}"


def endpoint_of(scheme: str) -> str:
    """The endpoint the cloud's variables set for a scheme ('' for the cloud's own)."""
    names = {"s3": ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_ENDPOINT"),
             "az": ("AZURE_STORAGE_ENDPOINT", "AZURE_ENDPOINT"), "gs": ("GOOGLE_BASE_URL",)}[scheme]
    return next((os.environ[n] for n in names if os.environ.get(n)), "")


def aws_profile() -> dict[str, str]:
    """obstore's settings from an AWS profile of the shared files (static keys, region, endpoint_url), as the AWS
    CLI reads them. StoreError for AWS_PROFILE naming no profile, or one whose credentials come from a role, SSO
    or a process: those need an AWS SDK (use web identity, which obstore reads, or static keys)."""
    name = os.environ.get("AWS_PROFILE") or os.environ.get("AWS_DEFAULT_PROFILE") or "default"
    home = Path.home() / ".aws"
    files = {Path(os.environ.get("AWS_SHARED_CREDENTIALS_FILE", home / "credentials")): name,
             Path(os.environ.get("AWS_CONFIG_FILE", home / "config")): "default" if name == "default" else
             f"profile {name}"}
    found: dict[str, str] = {}
    for path, section in files.items():
        parser = configparser.RawConfigParser()
        try:
            parser.read(path)
        except configparser.Error:
            raise StoreError(f"the AWS shared file {path} cannot be parsed") from None
        if parser.has_section(section):
            found = {**dict(parser.items(section)), **found}  # the credentials file wins, as for the AWS CLI
    if not found:
        if os.environ.get("AWS_PROFILE"):
            raise StoreError(f"AWS_PROFILE {name!r} is in neither {' nor '.join(map(str, files))}")
        return {}
    if "aws_access_key_id" not in found:
        needs = [k for k in found if k in ("role_arn", "credential_process", "credential_source")
                 or k.startswith("sso_")]
        if needs:
            raise StoreError(f"AWS profile {name!r} gets its credentials through {needs[0]}, which needs an AWS SDK: "
                             "give the server static keys, web identity (AWS_WEB_IDENTITY_TOKEN_FILE) or the "
                             "instance's role")
    keys = {"aws_access_key_id": "access_key_id", "aws_secret_access_key": "secret_access_key",
            "aws_session_token": "token", "region": "region", "endpoint_url": "endpoint"}
    return {ours: found[theirs] for theirs, ours in keys.items() if found.get(theirs)}


def _true(name: str) -> bool:
    return os.environ.get(name, "").lower() in ("1", "true", "yes")


def store_error(exc: Exception, where: str) -> StoreError:
    """One sentence for a failed call to the store `where` (describe()): credentials refused, a bucket missing,
    an endpoint unreachable (and why), or the store's own first line. Query strings (SAS tokens) are cut."""
    text = re.sub(r"(https?://[^\s?]+)\?\S*", r"\1", str(exc))
    code = next(iter(re.findall(r"<Code>(\w+)</Code>", text)), "")
    status = next(iter(re.findall(r"status code: (\d{3})", text)), "")
    if code in CREDENTIAL_CODES or status in ("401", "403") or isinstance(
            exc, PermissionDeniedError | UnauthenticatedError):
        cause = f"the store refused the credentials ({code or status or type(exc).__name__}); check the ones the " \
                "server is given"
    elif code in MISSING_CODES:
        cause = f"the bucket or container does not exist ({code})"
    elif "error sending request" in text or "timed out" in text:
        cause = "cannot reach the endpoint: " + next(why for key, why in UNREACHABLE if key in text)
    else:
        first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
        cause = first[:300]
    return StoreError(f"model store {where}: {cause}")


def list_objects(store: ObjectStore, where: str) -> list[dict]:
    """Every object under the store's prefix: {path (relative to it), size, e_tag, last_modified}. StoreError."""
    try:
        return [dict(meta) for batch in obstore.list(store) for meta in batch]
    except (BaseError, OSError) as exc:
        raise store_error(exc, where) from None


def read_object(store: ObjectStore, key: str, where: str) -> bytes:
    """One object's bytes (a small one: a manifest). StoreError, FileNotFoundError when it is gone."""
    try:
        return bytes(obstore.get(store, key).bytes())
    except FileNotFoundError:
        raise
    except (BaseError, OSError) as exc:
        raise store_error(exc, where) from None


def stream_object(store: ObjectStore, key: str, where: str, chunk_bytes: int = 8 << 20):
    """An object's bytes in chunks of about chunk_bytes. StoreError, FileNotFoundError when it is gone."""
    try:
        for chunk in obstore.get(store, key).stream(min_chunk_size=chunk_bytes):
            yield bytes(chunk)
    except FileNotFoundError:
        raise
    except (BaseError, OSError) as exc:
        raise store_error(exc, where) from None


def upload_package(store: ObjectStore, where: str, package: Path, key: str,
                   uploaded: Callable[[str, int], None] = lambda name, size: None) -> None:
    """Upload the package directory `package` (sealed: read_package accepts it) to KEY/ in the store: every file
    but the manifest, then the objects under KEY/ that the package does not have are deleted (a version written
    again), then manifest.json last. A reader lists a version only once its manifest is there, so it never sees
    one without its files; an upload cut short leaves no manifest, or the previous one (whose files no longer
    match: refused, never served). `uploaded(name, bytes)` is called after each file. StoreError."""
    files = sorted(p for p in package.iterdir() if p.is_file() and p.name != MANIFEST)
    prefix = key.strip("/") + "/"
    try:
        for path in files:
            obstore.put(store, prefix + path.name, path)
            uploaded(path.name, path.stat().st_size)
        keep = {prefix + p.name for p in files} | {prefix + MANIFEST}
        stale = [meta["path"] for batch in obstore.list(store, prefix) for meta in batch if meta["path"] not in keep]
        if stale:
            obstore.delete(store, stale)
        obstore.put(store, prefix + MANIFEST, package / MANIFEST)
        uploaded(MANIFEST, (package / MANIFEST).stat().st_size)
    except (BaseError, OSError) as exc:
        raise store_error(exc, where) from None
