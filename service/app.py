"""create_app(settings): the FastAPI app, its lifespan (background model loading) and error rendering."""

from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from starlette.exceptions import HTTPException

from service import __version__, logs
from service.api import health, repository, score, v1, v2
from service.api.body import json_response, validation_error
from service.errors import ServiceError
from service.metrics import Metrics
from service.package import PackageError
from service.middleware import ServiceMiddleware
from service.registry import Registry
from service.settings import Settings

log = logging.getLogger("rnnserve.app")
HTTP_CODES = {400: "bad_request", 401: "unauthorized", 404: "not_found", 405: "method_not_allowed",
              413: "payload_too_large", 415: "unsupported_media_type", 422: "invalid_input", 503: "not_ready"}


def error_response(request: Request, status: int, code: str, message: str, headers: dict | None = None):
    # tritonclient reads {"error": "<message>"}; the /v1 API gives a code as well.
    if request.url.path.startswith("/v2"):
        body = {"error": message}
    else:
        body = {"error": {"code": code, "message": message}}
    return json_response(body, status_code=status, headers=headers)


def create_app(settings: Settings | None = None) -> FastAPI:
    if settings is None:  # a worker process (or an ASGI server given the factory): settings from the environment
        settings = Settings()
        logs.configure(settings.log_level, settings.log_json)
    metrics = Metrics()
    registry = Registry(settings, metrics)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        # Load in the background: liveness answers at once, readiness waits for the models.
        loading = asyncio.create_task(registry.load_all())
        app.state.loading = loading
        try:
            yield
        finally:
            if not loading.done():
                loading.cancel()
            await registry.close()

    app = FastAPI(title="rnnserve", version=__version__, lifespan=lifespan,
                  description="Serves recurrent text classifiers (SimpleRNN, GRU, LSTM) exported to ONNX.")
    app.state.settings, app.state.metrics, app.state.registry = settings, metrics, registry
    app.include_router(health.router)
    app.include_router(v1.router)
    app.include_router(score.router)
    app.include_router(v2.router)
    app.include_router(repository.router)
    app.add_middleware(ServiceMiddleware, metrics=metrics, max_body_bytes=settings.max_body_bytes,
                       max_score_bytes=settings.max_score_bytes,
                       known_models=lambda name: name in registry.models or name in registry.failures,
                       access_log=settings.access_log, api_keys=settings.keys(),
                       metrics_public=settings.metrics_public)
    if settings.origins():  # added last, so it runs first: preflights need no API key
        app.add_middleware(CORSMiddleware, allow_origins=settings.origins(), allow_methods=["GET", "POST"],
                           allow_headers=["*"], expose_headers=["X-Request-ID"])

    @app.exception_handler(ServiceError)
    async def service_error(request: Request, exc: ServiceError):
        return error_response(request, exc.status, exc.code, exc.message, exc.headers or None)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError):
        error = validation_error(exc.errors())
        return error_response(request, error.status, error.code, error.message)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):
        message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if exc.status_code == 400 and message == "There was an error parsing the body":
            message = "request body could not be parsed (invalid UTF-8 or JSON?)"
        return error_response(request, exc.status_code, HTTP_CODES.get(exc.status_code, "http_error"), message,
                              getattr(exc, "headers", None))

    @app.exception_handler(PackageError)
    async def package_error(request: Request, exc: PackageError):
        return error_response(request, 400, "load_failed", str(exc))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception):
        log.exception("unhandled error", extra={"path": request.url.path})
        return error_response(request, 500, "internal_error", "internal server error; see the logs for this request id")

    return app
