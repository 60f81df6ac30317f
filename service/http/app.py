"""create_app(settings): the FastAPI app, its lifespan (background model loading), middleware and error handlers."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import re
import tempfile
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from starlette.exceptions import HTTPException

from rnnserve import __version__
from rnnserve.service import logs
from rnnserve.service.control import ModelControl
from rnnserve.service.core.errors import ServiceError
from rnnserve.service.http import health, repository, score, v1, v2
from rnnserve.service.http.errors import handle_error
from rnnserve.service.http.middleware import OPEN_PATHS, ServiceMiddleware, content_security_policy, is_loopback
from rnnserve.service.http.raw import RawRoutes
from rnnserve.service.metrics import Metrics
from rnnserve.service.registry import Registry
from rnnserve.service.runtime.states import SequenceStates
from rnnserve.service.settings import STATE_DIR_ENV, Settings

PAGE = "/ui"  # the built-in page (service/ui: plain HTML, CSS and JavaScript, nothing fetched from elsewhere)
UI_DIR = Path(__file__).resolve().parent / "ui"
DOCS = "/docs"
ROUTERS = (health.router, v1.router, score.router, v2.router, repository.router)  # the route table
DOCS_STATIC = "/docs/static"
INLINE_SCRIPT = re.compile(rb"<script>(.*?)</script>", re.S)
STATISTICS_FLUSH_S = 0.25  # how old another worker's figures in the statistics extension may be, at most
# With API keys set, OpenAPI declares both ways to send one, so Swagger UI's Authorize button can supply it.
SECURITY_SCHEMES = {"bearer": {"type": "http", "scheme": "bearer", "description": "Authorization: Bearer KEY"},
                    "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"}}


def create_app(settings: Settings | None = None, wait_for_models: bool = False) -> FastAPI:
    """wait_for_models: startup ends only once the models are loaded (for hosts that route traffic to an app
    as soon as it has started, such as Ray Serve); by default they load in the background."""
    if settings is None:  # a worker process (or an ASGI server given the factory): settings from the environment
        settings = Settings()
        logs.configure(settings.log_level, settings.log_json)
    metrics = Metrics(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
    registry = Registry(settings, metrics)
    state_dir = os.environ.get(STATE_DIR_ENV)  # several worker processes: set by the server's entry point
    control = ModelControl(registry, Path(state_dir) if state_dir else None)
    # One process: its sequences in a directory of its own, removed with the app.
    private: tempfile.TemporaryDirectory | None = None
    if state_dir:
        shared = Path(state_dir)
    else:
        private = tempfile.TemporaryDirectory(prefix="rnnserve-sequences-")
        shared = Path(private.name)
    sequences = SequenceStates(shared / "sequences", settings.sequence_idle_s, settings.max_sequences)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        # Load in the background: liveness answers at once, readiness waits for the models.
        loading = asyncio.create_task(control.start())
        app.state.loading = loading
        flushing = asyncio.create_task(metrics.flush_every(STATISTICS_FLUSH_S))
        if wait_for_models:
            await loading
        try:
            yield
        finally:
            if not loading.done():
                loading.cancel()
            flushing.cancel()
            await asyncio.gather(flushing, return_exceptions=True)  # its last flush
            await control.close()
            await registry.close()
            if private is not None:
                private.cleanup()

    telemetry = {key: settings.telemetry for key in ("tracing", "metrics", "logs")}
    # /docs with Swagger UI's script and styles served from here (fastapi-offline ships them): the default
    # page loads them from a public CDN and is blank in an air-gapped deployment. No /redoc: its page still
    # loads a logo from Redocly's CDN.
    app = FastAPIOffline(title="rnnserve", version=__version__, lifespan=lifespan, telemetry=telemetry,
                         docs_url=None, redoc_url=None,  # /docs: below, with its Content-Security-Policy
                         static_url=DOCS_STATIC, swagger_ui_parameters={"validatorUrl": None},  # no call out
                         description="Serves recurrent text classifiers (SimpleRNN, GRU, LSTM) exported to ONNX.")
    app.state.settings, app.state.metrics, app.state.registry = settings, metrics, registry
    app.state.control, app.state.sequences = control, sequences
    app.state.routes = [route for router in ROUTERS for route in router.routes]  # errors find a route's style
    for router in ROUTERS:
        app.include_router(router)
    app.add_api_route(DOCS, docs_page, include_in_schema=False)
    # Open with API keys set: what holds no data (a browser's navigation cannot carry a key). The page asks for
    # one, Swagger UI's Authorize button takes one; every call they make needs it.
    open_paths: tuple[str, ...] = (DOCS, app.openapi_url or DOCS)
    open_prefixes: tuple[str, ...] = (DOCS_STATIC + "/",)
    page_prefixes: tuple[str, ...] = ()
    if settings.keys():
        open_to_all = OPEN_PATHS | ({"/metrics"} if settings.metrics_public else set())
        app.openapi = declare_keys(app, open_to_all)  # type: ignore[method-assign]  # as FastAPI's docs do
    if settings.ui:
        app.mount(PAGE, StaticFiles(directory=UI_DIR, html=True), name="ui")
        app.add_api_route("/", lambda: RedirectResponse(f"{PAGE}/"), include_in_schema=False)
        open_paths += ("/",)
        open_prefixes += (PAGE + "/",)
        page_prefixes += (PAGE + "/",)
    # innermost: the RawRoutes of the route table, served first
    app.add_middleware(RawRoutes, routes=app.state.routes)
    app.add_middleware(ServiceMiddleware, metrics=metrics, max_body_bytes=settings.max_body_bytes,
                       max_score_bytes=settings.max_score_bytes,
                       known_models=registry.knows,
                       access_log=settings.access_log, api_keys=settings.keys(),
                       metrics_public=settings.metrics_public, open_paths=open_paths, open_prefixes=open_prefixes,
                       origins=settings.origins(), page_prefixes=page_prefixes,
                       loopback_only=is_loopback(settings.host))
    if settings.origins():  # added last, so it runs first: preflights need no API key
        app.add_middleware(CORSMiddleware, allow_origins=settings.origins(), allow_methods=["GET", "POST"],
                           allow_headers=["*"], expose_headers=["X-Request-ID"])

    for exc_type in (ServiceError, RequestValidationError, HTTPException, Exception):
        app.add_exception_handler(exc_type, handle_error)

    return app


async def docs_page(request: Request) -> HTMLResponse:
    """Swagger UI with its script and styles from fastapi-offline, and a Content-Security-Policy that allows
    its one inline script (which starts it) by that script's hash, computed from the page as served."""
    app, root = request.app, request.scope.get("root_path", "")
    page = get_swagger_ui_html(openapi_url=f"{root}{app.openapi_url}", title=f"{app.title} - Swagger UI",
                               swagger_js_url=f"{root}{DOCS_STATIC}/swagger-ui-bundle.js",
                               swagger_css_url=f"{root}{DOCS_STATIC}/swagger-ui.css",
                               swagger_favicon_url=f"{root}{DOCS_STATIC}/favicon.png",
                               oauth2_redirect_url=None, swagger_ui_parameters=app.swagger_ui_parameters)
    hashes = [base64.b64encode(hashlib.sha256(m).digest()).decode() for m in INLINE_SCRIPT.findall(page.body)]
    page.headers["Content-Security-Policy"] = content_security_policy(*hashes)
    return page


def declare_keys(app: FastAPI, open_paths: set[str]):
    """app.openapi, with the API keys declared: every operation needs one, except those on open paths."""
    build = app.openapi

    def openapi() -> dict:
        schema = build()  # FastAPI builds it once and keeps it
        if "security" not in schema:
            schema.setdefault("components", {})["securitySchemes"] = SECURITY_SCHEMES
            schema["security"] = [{name: []} for name in SECURITY_SCHEMES]
            for path in open_paths & set(schema["paths"]):
                for operation in schema["paths"][path].values():
                    operation["security"] = []
        return schema

    return openapi
