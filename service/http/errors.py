"""One error model for HTTP: every failure becomes {"error": {"code", "message"}} (/v2 routes: {"error": msg},
which tritonclient reads), with its status, its headers and the request id the middleware adds."""

from __future__ import annotations

import logging

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException

from rnnserve.service.core.errors import ServiceError
from rnnserve.service.http.body import json_response, validation_error

log = logging.getLogger("rnnserve.app")
HTTP_CODES = {400: "bad_request", 401: "unauthorized", 404: "not_found", 405: "method_not_allowed",
              413: "payload_too_large", 415: "unsupported_media_type", 422: "invalid_input", 503: "not_ready"}


def error_body(exc: ServiceError) -> dict:
    return {"error": {"code": exc.code, "message": exc.message}}


def error_response(request: Request, status: int, code: str, message: str, headers: dict | None = None) -> Response:
    body = {"error": message} if request.url.path.startswith("/v2") else {"error": {"code": code, "message": message}}
    return json_response(body, status_code=status, headers=headers)


def render_error(request: Request, exc: Exception) -> Response:
    """The answer for any exception a handler raised; unexpected ones are logged and answered 500."""
    if isinstance(exc, RequestValidationError):
        exc = validation_error(exc.errors())
    if isinstance(exc, ServiceError):
        return error_response(request, exc.status, exc.code, exc.message, exc.headers or None)
    if isinstance(exc, HTTPException):
        message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if exc.status_code == 400 and message == "There was an error parsing the body":
            message = "request body could not be parsed (invalid UTF-8 or JSON?)"
        return error_response(request, exc.status_code, HTTP_CODES.get(exc.status_code, "http_error"), message,
                              getattr(exc, "headers", None))
    log.exception("unhandled error", extra={"path": request.url.path}, exc_info=exc)
    return error_response(request, 500, "internal_error", "internal server error; see the logs for this request id")


async def handle_error(request: Request, exc: Exception) -> Response:
    """render_error as a FastAPI exception handler."""
    return render_error(request, exc)
