"""The per-text endpoints (/v1 predict, V2 infer), served straight from the ASGI scope.

FastAPI still declares these routes (OpenAPI, /docs) and serves every other one; for these, its routing,
exception and dependency layers cost about a third of a request's CPU (py-spy, docs/benchmarks.md), so this middleware,
innermost of the service's, matches them with FastAPI's own route patterns and calls the same endpoint
functions. Request ids, API keys, body limits, metrics and access logs come from the middleware around it,
and errors are rendered by the one error model."""

from __future__ import annotations

from fastapi.routing import APIRoute
from starlette.requests import Request

from rnnserve.service.http.errors import render_error


class HotRoutes:
    def __init__(self, app, routes: list[APIRoute]):
        self.app = app
        self.routes = [(r.path_regex.match, r) for r in routes]

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["method"] == "POST":
            for match, route in self.routes:
                if m := match(scope["path"]):
                    scope["route"], scope["path_params"] = route, m.groupdict()
                    request = Request(scope, receive)
                    try:
                        # hot endpoints take the model name; a version they read from the path params
                        response = await route.endpoint(name=scope["path_params"]["name"], request=request)
                    except Exception as exc:  # noqa: BLE001 - every failure gets the one error model's answer
                        response = render_error(request, exc)
                    return await response(scope, receive, send)
        await self.app(scope, receive, send)
