"""One error model for HTTP: every failure becomes the error body its route declares (its `responses`):
{"error": {"code", "message"}}, or {"error": msg} on the V2 routes (tritonclient reads that), with its status,
its headers and the request id the middleware adds."""

from __future__ import annotations

import logging

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.routing import Match

from rnnserve.service.core.errors import (
    BadRequest,
    InvalidInput,
    MethodNotAllowed,
    NotFound,
    NotReady,
    PayloadTooLarge,
    ServiceError,
    Unauthorized,
    UnsupportedMediaType,
)
from rnnserve.service.http.body import json_response, validation_error
from rnnserve.service.http.schemas import V2Error

log = logging.getLogger("rnnserve.app")
# Starlette's own errors (routing, body parsing, the middleware's body limit) as the service's: each status and
# code lives on one class.
STARLETTE_ERRORS: dict[int, type[ServiceError]] = {
    cls.status: cls for cls in (BadRequest, Unauthorized, NotFound, MethodNotAllowed, PayloadTooLarge,
                                UnsupportedMediaType, InvalidInput, NotReady)}


def error_body(exc: ServiceError) -> dict:
    return {"error": {"code": exc.code, "message": exc.message}}


def render_error(request: Request, exc: Exception) -> Response:
    """The one answer for any exception, from its class: {"error": {"code", "message"}}, or {"error": message}
    where the route declares V2Error and on every other /v2 path (the V2 protocol's shape: tritonclient reads
    that), with the class's status and headers. Unexpected exceptions are logged and answered 500."""
    error: ServiceError
    if isinstance(exc, RequestValidationError):
        error = validation_error(list(exc.errors()))
    elif isinstance(exc, HTTPException):
        error = _from_starlette(exc)
    elif isinstance(exc, ServiceError):
        error = exc
    else:
        log.exception("unhandled error", extra={"path": request.url.path}, exc_info=exc)
        error = ServiceError("internal server error; see the logs for this request id")
    v2 = declared_error_model(request) is V2Error or request.url.path.startswith("/v2")  # unknown /v2 paths too
    body = {"error": error.message} if v2 else error_body(error)
    return json_response(body, status_code=error.status, headers=error.headers or None)


def declared_error_model(request: Request) -> type | None:
    """The error model the request's route declares for 400 in its `responses` (what OpenAPI documents). The
    route is the router's match or, for errors raised before routing (the middleware's 401, 403), the first
    route of the route table (app.state.routes) that matches the path; None where none does (an unknown path)."""
    route = request.scope.get("route")
    if route is None and "app" in request.scope:
        routes = getattr(request.app.state, "routes", ())
        route = next((r for r in routes if r.matches(request.scope)[0] != Match.NONE), None)
    return getattr(route, "responses", {}).get(400, {}).get("model")


def _from_starlette(exc: HTTPException) -> ServiceError:
    message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
    if exc.status_code == 400 and message == "There was an error parsing the body":
        message = "request body could not be parsed (invalid UTF-8 or JSON?)"
    return STARLETTE_ERRORS.get(exc.status_code, BadRequest)(message, dict(exc.headers or {}))


async def handle_error(request: Request, exc: Exception) -> Response:
    """render_error as a FastAPI exception handler."""
    return render_error(request, exc)
