"""uvicorn's httptools protocol with the guards it lacks: a cap on the bytes of a request's head (431), a
deadline for a head to arrive (connections that send nothing, or trickle, are closed), and a cap on open
connections per worker (refused and logged). Limits come from the worker's settings, given by its app factory
(`configure`) before the server accepts a connection.

The head deadline runs only while the connection owes the server a head: from the connection's start, and from
the moment the previous response has been sent. A request being computed or streamed is never cut by it."""

from __future__ import annotations

import asyncio
import logging
import time

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from rnnserve.service.core.errors import HeaderTooLarge
from rnnserve.service.http.errors import error_body
from rnnserve.service.settings import Settings

log = logging.getLogger("rnnserve.http")


_limits: Settings | None = None


def configure(settings: Settings) -> None:
    """The settings every connection of this worker is held to (the app factory calls it)."""
    global _limits
    _limits = settings


def limits() -> Settings:
    assert _limits is not None, "the app factory configures the connections' limits before any is accepted"
    return _limits


class GuardedHttpTools(HttpToolsProtocol):
    _last_refusal_log = 0.0  # the connection cap is logged at most every 10 s, not per refused connection

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        settings = limits()
        self._head_bytes, self._in_head, self._heads = 0, True, 0
        self._head_timer: asyncio.TimerHandle | None = None
        if len(self.connections) > settings.per_worker(settings.max_connections):
            now = time.monotonic()
            if now - GuardedHttpTools._last_refusal_log > 10:
                GuardedHttpTools._last_refusal_log = now
                log.warning("connection cap reached: refusing new connections",
                            extra={"max_connections": settings.max_connections,
                                   "this_worker": settings.per_worker(settings.max_connections)})
            transport.close()
            return
        self._start_head_timer()

    def _start_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
        self._head_timer = self.loop.call_later(limits().header_timeout_s, self._head_timeout)

    def _head_timeout(self) -> None:
        if self._in_head and not self.transport.is_closing():
            self.transport.close()

    def connection_lost(self, exc) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        in_head, heads = self._in_head, self._heads
        if in_head and not self.transport.is_closing():
            # Checked before parsing: the head's bytes in this chunk are all of it, or up to the blank line
            # that ends it (a head sent whole in one chunk is counted too; a body after it is not).
            end = data.find(b"\r\n\r\n")
            if self._head_bytes + (len(data) if end < 0 else end + 4) > limits().max_header_bytes:
                self._refuse_head()
                return
        super().data_received(data)
        # A head was open before this chunk and none completed in it: all of the chunk belongs to that head.
        if in_head and heads == self._heads and not self.transport.is_closing():
            self._head_bytes += len(data)

    def on_headers_complete(self) -> None:
        self._in_head, self._head_bytes = False, 0
        self._heads += 1
        if self._head_timer is not None:
            self._head_timer.cancel()
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._in_head = True  # bytes from here on belong to the next head (the size cap counts them)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        # A keep-alive connection owes the next head from now: unless that head already came (pipelined) and
        # its request runs, the deadline starts again.
        if (self._in_head and not self.pipeline and self.cycle.response_complete
                and not self.transport.is_closing()):
            self._start_head_timer()

    def _refuse_head(self) -> None:
        limit = limits().max_header_bytes
        body = orjson.dumps(error_body(HeaderTooLarge(f"request line and headers exceed {limit} bytes")))
        self.transport.write(b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\n"
                             b"x-content-type-options: nosniff\r\n"
                             b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(body), body))
        self.transport.close()
