"""Pure ASGI middleware (cheaper than BaseHTTPMiddleware): request id, security headers, the Origin check,
API keys, body limit, metrics, access log, tracing's server span, and an early error's body read before it is
answered."""

from __future__ import annotations

import ipaddress
import logging
import time
from collections.abc import Sequence

from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException
from starlette.requests import Request

from rnnserve.service.core.errors import Forbidden, echo
from rnnserve.service.http.errors import render_error
from rnnserve.service.logs import accept_request_id, request_id
from rnnserve.service.observe.tracing import Tracing
from rnnserve.service.v2.dataplane import DataPlane

log = logging.getLogger("rnnserve.access")
REQUEST_ID_HEADER = b"x-request-id"
# An error answered before the body was read (an unknown model, a refused key) first reads the rest of the body,
# up to this much: a server that closes with unread bytes makes the kernel reset the connection, and clients
# that send the whole body before reading (urllib, requests) lose the answer. Past it the connection is closed.
DRAIN_BYTES = 64 << 20
OPEN_PATHS = {"/health/live", "/health/ready", "/v2/health/live", "/v2/health/ready"}
NOSNIFF = (b"x-content-type-options", b"nosniff")  # a browser takes each answer for its declared type only
SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}


def content_security_policy(*script_hashes: str) -> str:
    """For the page and the docs: nothing from elsewhere, no inline script but those named by their sha256
    (base64), and no framing by any site (the page keeps an API key in session storage)."""
    scripts = " ".join(["'self'", *(f"'sha256-{h}'" for h in script_hashes)])
    return (f"default-src 'self'; script-src {scripts}; img-src 'self' blob: data:; base-uri 'none'; "
            "frame-ancestors 'none'")


class StreamedBodyRoute(APIRoute):
    """A route whose handler streams its request body (file scoring): MAX_SCORE_BYTES bounds the body instead
    of MAX_BODY_BYTES. The middleware reads a route's `body_limit` (a limit's name) once routing matched it."""

    body_limit = "max_score_bytes"


class ServiceMiddleware:
    def __init__(self, app, dataplane: DataPlane, max_body_bytes: int, max_score_bytes: int,
                 access_log: bool = True, metrics_public: bool = True,
                 open_paths: tuple[str, ...] = (), open_prefixes: tuple[str, ...] = (),
                 origins: Sequence[str] = (), page_prefixes: tuple[str, ...] = (), loopback_only: bool = False,
                 tracing: Tracing | None = None):
        self.app = app
        self.dataplane = dataplane
        self.keyed = bool(dataplane.keys)
        # What holds no data needs no key (a browser's navigation cannot send one): health, the docs, the page.
        self.open_paths = OPEN_PATHS | set(open_paths) | ({"/metrics"} if metrics_public else set())
        self.open_prefixes = open_prefixes
        # Origins besides the service's own whose pages may change state (CORS_ORIGINS); "*" allows any.
        self.origins = {o.lower().rstrip("/") for o in origins}
        self.page_policy = (b"content-security-policy", content_security_policy().encode())
        self.page_prefixes = page_prefixes
        # Bound to a loopback address, the service's own origin can only be a loopback name: a page from a name
        # that resolves to 127.0.0.1 (DNS rebinding) sends Host and Origin of that name, which match each other.
        self.loopback_only = loopback_only
        # Each route's limit by name (StreamedBodyRoute.body_limit); max_body_bytes for every other one
        self.body_limits = {"max_body_bytes": max_body_bytes, "max_score_bytes": max_score_bytes}
        self.access_log = access_log
        self.tracing = tracing
        # No spans for probes, metrics, the page and the docs: what holds no data needs no trace either.
        self.untraced = (self.open_paths | {"/metrics"}, open_prefixes)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        rid = accept_request_id(_header(scope, REQUEST_ID_HEADER))
        token = request_id.set(rid)
        status, responded = 500, False
        body = _Body(scope, receive, self.body_limits)

        extra = [(REQUEST_ID_HEADER, rid.encode("latin-1")), NOSNIFF]
        if scope["path"].startswith(self.page_prefixes):
            extra.append(self.page_policy)

        async def send_with_id(message):
            nonlocal status, responded
            if message["type"] == "http.response.start":
                status, responded = message["status"], True
                message["headers"] = list(message.get("headers", [])) + extra
                if status >= 400:
                    await body.drain(DRAIN_BYTES)
            await send(message)

        span = span_token = None
        if self.tracing is not None and not self._untraced(scope["path"]):
            span, span_token = self.tracing.start(scope["method"], _propagated(scope), {
                "http.request.method": scope["method"], "url.path": scope["path"]})
        try:
            if (origin := self._foreign_origin(scope)) is not None:
                raise _forbidden(origin)
            if self.keyed and not self._open(scope["path"]):
                self.dataplane.authorize(_key(scope))
            await self.app(scope, body.receive, send_with_id)
        except Exception as exc:
            if responded:  # the status is on the wire already: nothing better can be sent
                raise
            # Rendered here, not by Starlette's outermost handler, so a 500 carries its request id too.
            await render_error(Request(scope), exc)(scope, body.receive, send_with_id)
        finally:
            seconds = time.perf_counter() - started
            route = scope.get("route")
            endpoint = getattr(route, "path", "unmatched")
            self.dataplane.observe(scope.get("path_params", {}).get("name", ""), endpoint, status, seconds)
            if span is not None:
                self._end_span(span, span_token, scope, route, status)
            if self.access_log:
                log.info("request", extra={"method": scope["method"], "path": scope["path"], "status": status,
                                           "ms": round(seconds * 1000, 2)})
            request_id.reset(token)

    def _untraced(self, path: str) -> bool:
        paths, prefixes = self.untraced
        return path in paths or path.startswith(prefixes)

    def _end_span(self, span, token, scope, route, status: int) -> None:
        assert self.tracing is not None  # a span was started
        attributes = {"http.response.status_code": status}
        if route is not None:
            attributes["http.route"] = route.path
            span.update_name(f"{scope['method']} {route.path}")
        self.tracing.end(span, token, attributes, str(status) if status >= 500 else None)

    def _foreign_origin(self, scope) -> str | None:
        """The Origin of a browser's state-changing request from a page that is neither this service's nor
        allowed by CORS_ORIGINS. Browsers send Origin with every POST; a page may send some POSTs (no body, or
        text/plain) without a CORS preflight, and the service must not act on them. Without an Origin (curl,
        tritonclient, another server) there is no page to distrust."""
        if scope["method"] in SAFE_METHODS:
            return None
        origin = _header(scope, b"origin")
        if origin is None or "*" in self.origins or origin.lower() in self.origins:
            return None
        host = _header(scope, b"host")
        if (host is not None and origin.lower() == f"{scope['scheme']}://{host.lower()}"
                and (not self.loopback_only or _loopback(host))):
            return None
        return origin

    def _open(self, path: str) -> bool:
        return path in self.open_paths or path.startswith(self.open_prefixes)



class _Body:
    """receive(), refusing a body past its route's limit (413): by its Content-Length at the first read, else as
    it arrives (the route is known by then: a body is read after routing). It notes whether the body has been
    read to its end, so an early error can read the rest first (`drain`)."""

    def __init__(self, scope, receive, limits: dict[str, int]):
        self.scope, self._receive, self.limits = scope, receive, limits
        self.seen, self.limit, self.done = 0, 0, False

    async def receive(self):
        if not self.limit:
            self.limit = self.limits[getattr(self.scope.get("route"), "body_limit", "max_body_bytes")]
            length = _header(self.scope, b"content-length")
            if length and length.isdigit() and int(length) > self.limit:
                raise _too_large(self.limit)
        message = await self._receive()
        if message["type"] == "http.request":
            self.seen += len(message.get("body", b""))
            if self.seen > self.limit:
                raise _too_large(self.limit)
            self.done = not message.get("more_body", False)
        else:
            self.done = True
        return message

    async def drain(self, limit: int) -> None:
        """Read and discard what is left of the body, up to `limit` bytes past what was read."""
        seen = 0
        while not self.done and seen <= limit:
            message = await self._receive()
            seen += len(message.get("body", b""))
            self.done = message["type"] != "http.request" or not message.get("more_body", False)


def _propagated(scope) -> dict[str, str]:
    """The W3C trace context headers a request carries."""
    return {key.decode(): value.decode("latin-1") for key, value in scope["headers"]
            if key in (b"traceparent", b"tracestate")}


def _key(scope) -> bytes | None:
    """The API key a request carries: `X-API-Key: KEY` or `Authorization: Bearer KEY` (spaces around it are not
    part of it)."""
    given = None
    for key, value in scope["headers"]:
        if key == b"x-api-key":
            given = value.strip()
        elif key == b"authorization" and value[:7].lower() == b"bearer ":
            given = value[7:].strip()
    return given


def _forbidden(origin: str) -> Forbidden:
    return Forbidden(f"a page from origin {echo(origin)} may not change this service's state: only the service's "
                     "own origin and those in RNNSERVE_CORS_ORIGINS may")


def _loopback(host: str) -> bool:
    """A Host header (with or without a port) naming this machine's loopback interface."""
    return is_loopback(host[1:].split("]")[0] if host.startswith("[") else host.split(":")[0])


def is_loopback(name: str) -> bool:
    """localhost or a loopback address (127.0.0.0/8, ::1); not a name that merely starts like one."""
    if name.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _header(scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")
    return None


def _too_large(limit: int) -> HTTPException:
    # FastAPI re-raises HTTPException from body parsing, so this reaches the 413 handler intact.
    return HTTPException(413, f"request body exceeds the limit of {limit} bytes")
