"""create_http_app(state, dataplane, lifespan): the FastAPI app over a worker's ServerState and V2 data plane,
with its routes, middleware and error handlers; the caller (service/app.py) owns the lifespan."""

from __future__ import annotations

import base64
import hashlib
import re
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
from rnnserve.service.core.errors import ServiceError
from rnnserve.service.http import connection, health, repository, rollout, score, v1, v2
from rnnserve.service.http.errors import handle_error
from rnnserve.service.http.middleware import OPEN_PATHS, ServiceMiddleware, content_security_policy, is_loopback
from rnnserve.service.http.raw import RawRoutes
from rnnserve.service.observe.tracing import Tracing
from rnnserve.service.state import ServerState
from rnnserve.service.v2.dataplane import DataPlane

PAGE = "/ui"  # the built-in page (service/ui: plain HTML, CSS and JavaScript, nothing fetched from elsewhere)
UI_DIR = Path(__file__).resolve().parent / "ui"
DOCS = "/docs"
ROUTERS = (health.router, v1.router, rollout.router, score.router, v2.router, repository.router)  # the route table
DOCS_STATIC = "/docs/static"
INLINE_SCRIPT = re.compile(rb"<script>(.*?)</script>", re.S)
# With API keys set, OpenAPI declares both ways to send one, so Swagger UI's Authorize button can supply it.
SECURITY_SCHEMES = {"bearer": {"type": "http", "scheme": "bearer", "description": "Authorization: Bearer KEY"},
                    "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"}}


def create_http_app(state: ServerState, dataplane: DataPlane, lifespan, tracing: Tracing | None = None) -> FastAPI:
    """The HTTP side of one worker. lifespan: the worker's (it starts and stops the state). tracing: the server
    spans' tracer (None: untraced)."""
    settings = state.settings
    connection.configure(settings)
    telemetry = {key: settings.telemetry for key in ("tracing", "metrics", "logs")}
    # /docs with Swagger UI's script and styles served from here (fastapi-offline ships them): the default
    # page loads them from a public CDN and is blank in an air-gapped deployment. No /redoc: its page still
    # loads a logo from Redocly's CDN.
    app = FastAPIOffline(title="rnnserve", version=__version__, lifespan=lifespan, telemetry=telemetry,
                         docs_url=None, redoc_url=None,  # /docs: below, with its Content-Security-Policy
                         static_url=DOCS_STATIC, swagger_ui_parameters={"validatorUrl": None},  # no call out
                         description="Serves recurrent text classifiers (SimpleRNN, GRU, LSTM) exported to ONNX.")
    app.state.server, app.state.dataplane = state, dataplane  # read through http/context.py
    app.state.routes = [route for router in ROUTERS for route in router.routes]  # errors find a route's style
    for router in ROUTERS:
        app.include_router(router)
    app.add_api_route(DOCS, docs_page, include_in_schema=False)
    # Open with API keys set: what holds no data (a browser's navigation cannot carry a key). The page asks for
    # one, Swagger UI's Authorize button takes one; every call they make needs it.
    open_paths: tuple[str, ...] = (DOCS, app.openapi_url or DOCS)
    open_prefixes: tuple[str, ...] = (DOCS_STATIC + "/",)
    page_prefixes: tuple[str, ...] = ()
    if dataplane.keys:
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
    app.add_middleware(ServiceMiddleware, dataplane=dataplane, max_body_bytes=settings.max_body_bytes,
                       max_score_bytes=settings.max_score_bytes, access_log=settings.access_log,
                       metrics_public=settings.metrics_public, open_paths=open_paths, open_prefixes=open_prefixes,
                       origins=settings.origins(), page_prefixes=page_prefixes,
                       loopback_only=is_loopback(settings.host), tracing=tracing)
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
