"""A FIFO of body chunks that never blocks the writer: chunks stay in memory up to a bound, the rest go to a
temporary file until the reader catches up. File scoring reads uploads through it, so a client that sends
its whole file before reading any answer (most HTTP clients do) cannot deadlock the stream, and memory
stays bounded whatever the file size."""

from __future__ import annotations

import asyncio
import collections
import tempfile
from typing import IO


class BodySpool:
    def __init__(self, memory_bytes: int = 8 * 1024 * 1024):
        self.memory_bytes = memory_bytes
        self._memory: collections.deque[bytes] = collections.deque()
        self._in_memory = 0
        self._file: IO[bytes] | None = None
        self._written = self._read = 0  # file offsets
        self._sizes: collections.deque[int] = collections.deque()  # chunk sizes in the file, in order
        self._closed = False
        self._ready = asyncio.Event()

    def put(self, chunk: bytes) -> None:
        if self._file is None and self._in_memory + len(chunk) <= self.memory_bytes:
            self._memory.append(chunk)
            self._in_memory += len(chunk)
        else:  # spill; everything after the first spilled chunk goes to the file too, keeping the order
            if self._file is None:
                self._file = tempfile.TemporaryFile(prefix="rnnserve-upload-")
            spill = self._file
            spill.seek(self._written)
            spill.write(chunk)
            self._written += len(chunk)
            self._sizes.append(len(chunk))
        self._ready.set()

    def close(self) -> None:
        """No more chunks will come."""
        self._closed = True
        self._ready.set()

    async def get(self) -> bytes | None:
        """The next chunk, in order; None once closed and drained."""
        while True:
            if self._memory:
                chunk = self._memory.popleft()
                self._in_memory -= len(chunk)
                return chunk
            if self._sizes:
                spill = self._file
                assert spill is not None  # chunk sizes are kept for chunks in the file
                spill.seek(self._read)
                chunk = spill.read(self._sizes.popleft())
                self._read += len(chunk)
                if not self._sizes:  # drained: back to memory, and the file can be reused from the start
                    spill.seek(0)
                    spill.truncate()
                    spill.close()
                    self._file, self._written, self._read = None, 0, 0
                return chunk
            if self._closed:
                return None
            self._ready.clear()
            await self._ready.wait()

    def discard(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
