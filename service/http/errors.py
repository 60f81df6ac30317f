"""One error model for HTTP: every failure becomes {"error": {"code", "message"}} (/v2 routes: {"error": msg},
which tritonclient reads), with its status, its headers and the request id the middleware adds."""

from __future__ import annotations

import logging

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException

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
    on /v2 routes (tritonclient reads that), with the class's status and headers. Unexpected exceptions are
    logged and answered 500."""
    if isinstance(exc, RequestValidationError):
        exc = validation_error(exc.errors())
    elif isinstance(exc, HTTPException):
        exc = _from_starlette(exc)
    elif not isinstance(exc, ServiceError):
        log.exception("unhandled error", extra={"path": request.url.path}, exc_info=exc)
        exc = ServiceError("internal server error; see the logs for this request id")
    body = {"error": exc.message} if request.url.path.startswith("/v2") else error_body(exc)
    return json_response(body, status_code=exc.status, headers=exc.headers or None)


def _from_starlette(exc: HTTPException) -> ServiceError:
    message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
    if exc.status_code == 400 and message == "There was an error parsing the body":
        message = "request body could not be parsed (invalid UTF-8 or JSON?)"
    return STARLETTE_ERRORS.get(exc.status_code, BadRequest)(message, exc.headers)


async def handle_error(request: Request, exc: Exception) -> Response:
    """render_error as a FastAPI exception handler."""
    return render_error(request, exc)
