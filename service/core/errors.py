"""Service exceptions: each carries its HTTP status and a stable error code."""

from __future__ import annotations

ECHO_CHARS = 80  # a client's value quoted in a message: enough to recognise it, never a megabyte sent back


def echo(value: object) -> str:
    """repr(value) for an error message, cut to ECHO_CHARS with the full length said."""
    text = repr(value)
    return text if len(text) <= ECHO_CHARS else f"{text[:ECHO_CHARS]}... ({len(text)} characters)"


class ServiceError(Exception):
    status = 500
    code = "internal_error"
    headers: dict[str, str] = {}

    def __init__(self, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.message = message
        if headers:
            self.headers = {**type(self).headers, **headers}


class BadRequest(ServiceError):
    status, code = 400, "bad_request"


class ClientGone(ServiceError):
    status, code = 400, "client_disconnected"  # nobody reads it; it keeps the metrics and logs honest


class Unauthorized(ServiceError):
    status, code = 401, "unauthorized"
    headers = {"WWW-Authenticate": "Bearer"}


class Forbidden(ServiceError):
    status, code = 403, "forbidden"


class NotFound(ServiceError):
    status, code = 404, "not_found"


class MethodNotAllowed(ServiceError):
    status, code = 405, "method_not_allowed"


class Conflict(ServiceError):
    """The request raced another that changed what it relied on (e.g. two steps of one sequence at once)."""

    status, code = 409, "conflict"


class PayloadTooLarge(ServiceError):
    status, code = 413, "payload_too_large"


class UnsupportedMediaType(ServiceError):
    status, code = 415, "unsupported_media_type"


class InvalidInput(ServiceError):
    status, code = 422, "invalid_input"


class HeaderTooLarge(ServiceError):
    status, code = 431, "header_too_large"


class NotReady(ServiceError):
    status, code = 503, "not_ready"
    headers = {"Retry-After": "1"}


class Overloaded(ServiceError):
    status, code = 503, "overloaded"
    headers = {"Retry-After": "1"}


class StorageUnavailable(ServiceError):
    """State the server keeps on disk (a sequence's, model control's) could not be read or written: the disk is
    full, read-only or failing. Nothing was changed."""

    status, code = 503, "storage_unavailable"


class ModelClosed(Overloaded):
    """The model copy was unloaded or replaced while the request waited; a retry reaches the current one."""


class WrongTask(ServiceError):
    """The operation does not fit the model's task (e.g. texts sent to a numeric-sequence model). hint: how to
    use this model instead, in the words of the protocol the request came by."""

    status, code = 422, "wrong_task"

    def __init__(self, name: str, task: str, needs: tuple[str, ...], hint: str = ""):
        super().__init__(f"model {echo(name)} is a {task} model, and this operation needs {' or '.join(needs)}"
                         + (f"; {hint}" if hint else ""))
