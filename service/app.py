"""create_app(settings): the FastAPI app, its lifespan (background model loading), middleware and error handlers."""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager

from pathlib import Path

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import RedirectResponse
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from starlette.exceptions import HTTPException

from service import __version__, logs
from service.api import health, repository, score, v1, v2
from service.api.errors import handle_error
from service.api.hot import HotRoutes
from service.errors import ServiceError
from service.metrics import Metrics
from service.middleware import ServiceMiddleware
from service.registry import Registry
from service.settings import Settings

PAGE = "/ui"  # the built-in page (service/ui: plain HTML, CSS and JavaScript, nothing fetched from elsewhere)
UI_DIR = Path(__file__).resolve().parent / "ui"
DOCS_STATIC = "/docs/static"


def create_app(settings: Settings | None = None, wait_for_models: bool = False) -> FastAPI:
    """wait_for_models: startup ends only once the models are loaded (for hosts that route traffic to an app
    as soon as it has started, such as Ray Serve); by default they load in the background."""
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
        if wait_for_models:
            await loading
        try:
            yield
        finally:
            if not loading.done():
                loading.cancel()
            await registry.close()

    telemetry = {key: settings.telemetry for key in ("tracing", "metrics", "logs")}
    # /docs with Swagger UI's script and styles served from here (fastapi-offline ships them): the default
    # page loads them from a public CDN and is blank in an air-gapped deployment. No /redoc: its page still
    # loads a logo from Redocly's CDN.
    app = FastAPIOffline(title="rnnserve", version=__version__, lifespan=lifespan, telemetry=telemetry,
                         redoc_url=None,
                         static_url=DOCS_STATIC, swagger_ui_parameters={"validatorUrl": None},  # no call out
                         description="Serves recurrent text classifiers (SimpleRNN, GRU, LSTM) exported to ONNX.")
    app.state.settings, app.state.metrics, app.state.registry = settings, metrics, registry
    app.include_router(health.router)
    app.include_router(v1.router)
    app.include_router(score.router)
    app.include_router(v2.router)
    app.include_router(repository.router)
    hot = [r for router in (v1.router, v2.router) for r in router.routes
           if r.endpoint in (v1.predict, v2.infer)]
    open_prefixes = (DOCS_STATIC + "/",)
    if settings.ui:
        app.mount(PAGE, StaticFiles(directory=UI_DIR, html=True), name="ui")
        app.add_api_route("/", lambda: RedirectResponse(f"{PAGE}/"), include_in_schema=False)
        open_prefixes += (PAGE + "/",)
    app.add_middleware(HotRoutes, routes=hot)
    app.add_middleware(ServiceMiddleware, metrics=metrics, max_body_bytes=settings.max_body_bytes,
                       max_score_bytes=settings.max_score_bytes,
                       known_models=lambda name: name in registry.models or name in registry.failures,
                       access_log=settings.access_log, api_keys=settings.keys(),
                       metrics_public=settings.metrics_public, open_prefixes=open_prefixes)
    if settings.origins():  # added last, so it runs first: preflights need no API key
        app.add_middleware(CORSMiddleware, allow_origins=settings.origins(), allow_methods=["GET", "POST"],
                           allow_headers=["*"], expose_headers=["X-Request-ID"])

    for exc_type in (ServiceError, RequestValidationError, HTTPException, Exception):
        app.add_exception_handler(exc_type, handle_error)

    return app
