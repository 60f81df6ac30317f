"""Service exceptions: each carries its HTTP status and a stable error code."""

from __future__ import annotations


class ServiceError(Exception):
    status = 500
    code = "internal_error"
    headers: dict[str, str] = {}

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class BadRequest(ServiceError):
    status, code = 400, "bad_request"


class ClientGone(ServiceError):
    status, code = 400, "client_disconnected"  # nobody reads it; it keeps the metrics and logs honest


class Unauthorized(ServiceError):
    status, code = 401, "unauthorized"


class NotFound(ServiceError):
    status, code = 404, "not_found"


class PayloadTooLarge(ServiceError):
    status, code = 413, "payload_too_large"


class UnsupportedMediaType(ServiceError):
    status, code = 415, "unsupported_media_type"


class InvalidInput(ServiceError):
    status, code = 422, "invalid_input"


class NotReady(ServiceError):
    status, code = 503, "not_ready"
    headers = {"Retry-After": "1"}


class Overloaded(ServiceError):
    status, code = 503, "overloaded"
    headers = {"Retry-After": "1"}


class ModelClosed(Overloaded):
    """The model copy was unloaded or replaced while the request waited; a retry reaches the current one."""
