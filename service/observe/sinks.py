"""Where payload events go (payload.py's sender thread calls `send` with a few events at a time; a sink may block,
never the event loop):

- FileSink: structured CloudEvents, one JSON object a line, appended to one file the server's workers share. A
  worker appends a batch of lines with one write under an exclusive lock (flock), so lines never interleave; the
  worker that finds the file past max_bytes rotates it (FILE -> FILE.1 -> ... -> FILE.N, the oldest deleted), and
  the others notice the new file under the same lock and reopen it.
- HttpSink: each event POSTed in CloudEvents' binary mode (ce-* headers, the data as the body), as KServe's
  inference logger sends them; any status but 2xx is a failed send.
"""

from __future__ import annotations

import fcntl
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import httpx
from cloudevents.conversion import to_binary, to_json
from cloudevents.http import CloudEvent

log = logging.getLogger("rnnserve.payload")


class Sink(Protocol):
    def send(self, events: Sequence[CloudEvent]) -> int:
        """Deliver the events: how many could not be (the sink unwritable, refused or unreachable; logged)."""

    def close(self) -> None: ...


class FileSink:
    def __init__(self, path: Path, max_bytes: int, backups: int):
        self.path, self.max_bytes, self.backups = path, max_bytes, backups
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = self._open()

    def _open(self) -> int:
        return os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)

    def send(self, events: Sequence[CloudEvent]) -> int:
        data = b"".join(to_json(event) + b"\n" for event in events)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            try:
                self._follow()
                size = os.fstat(self._fd).st_size
                if size and size + len(data) > self.max_bytes:
                    self._rotate()
                os.write(self._fd, data)
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
        except OSError as exc:
            log.warning("payload events not written", extra={"path": str(self.path), "error": str(exc)})
            return len(events)
        return 0

    def _follow(self) -> None:
        """Reopen the file if another worker rotated it (or it was removed) since this one opened it."""
        try:
            current = os.stat(self.path).st_ino
        except FileNotFoundError:
            current = -1
        if current != os.fstat(self._fd).st_ino:
            self._reopen()

    def _rotate(self) -> None:
        for n in range(self.backups - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{n}")
            if older.exists():
                older.replace(self.path.with_name(f"{self.path.name}.{n + 1}"))
        self.path.replace(self.path.with_name(f"{self.path.name}.1"))
        self._reopen()

    def _reopen(self) -> None:
        # The lock is held on the old descriptor: take it on the new one before letting go of the old.
        fd = self._open()
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.close(self._fd)
        self._fd = fd

    def close(self) -> None:
        os.close(self._fd)


class HttpSink:
    def __init__(self, url: str, timeout_s: float):
        self.url = url
        self._client = httpx.Client(timeout=timeout_s)

    def send(self, events: Sequence[CloudEvent]) -> int:
        failed = 0
        for event in events:
            headers, body = to_binary(event)
            try:
                answer = self._client.post(self.url, headers=headers, content=body)
                error = None if answer.is_success else f"answered {answer.status_code}"
            except httpx.HTTPError as exc:
                error = str(exc) or type(exc).__name__
            if error is not None:
                failed += 1
                log.warning("payload event not sent", extra={"url": self.url, "error": error})
        return failed

    def close(self) -> None:
        self._client.close()


def open_sink(target: str, max_bytes: int, backups: int, timeout_s: float) -> Sink:
    """An http(s):// URL: an HttpSink; anything else is a file's path."""
    if target.startswith(("http://", "https://")):
        return HttpSink(target, timeout_s)
    return FileSink(Path(target), max_bytes, backups)
