"""The per-text endpoints (/v1 predict, V2 infer), served past FastAPI's per-request layers.

They are routes of the one route table, declared with raw_post (a RawRoute): FastAPI documents them (OpenAPI,
/docs), and their handler is the endpoint itself, endpoint(name, request), with no dependency or body
machinery. The endpoints read and validate their own bodies (body.py); errors get the one error model, and the
data plane hears of each (`refused`: a failed request's payload event).

RawRoutes, the innermost middleware, serves the table's RawRoutes before Starlette's router, with their own
patterns: measured side by side (docs/benchmarks.md), routing them through the router and its exception
layers cost 15-21% of the service's requests per second on this path. The middleware is generated from the
route table (every RawRoute in it), so there is one place that declares a route, not a second list."""

from __future__ import annotations

from collections.abc import Callable

from fastapi import APIRouter, Request, Response
from fastapi.routing import APIRoute
from starlette.routing import BaseRoute

from rnnserve.service.http.context import dataplane
from rnnserve.service.http.errors import render_error


class RawRoute(APIRoute):
    def get_route_handler(self) -> Callable:
        endpoint = self.endpoint

        async def handle(request: Request) -> Response:
            try:
                return await endpoint(request.path_params["name"], request)
            except Exception as exc:  # noqa: BLE001 - every failure gets the one error model's answer
                return refused(request, exc)

        return handle


def refused(request: Request, exc: Exception) -> Response:
    """The error's answer, the data plane's observers told of the refusal first (payload logging)."""
    dataplane(request).refused(request.path_params["name"], request.url.path.split("/", 2)[1], exc)
    return render_error(request, exc)


def raw_post(router: APIRouter, path: str, **kwargs) -> Callable:
    """@router.post for an endpoint(name, request) served by RawRoute."""
    def decorator(endpoint: Callable) -> Callable:
        router.add_api_route(path, endpoint, methods=["POST"], route_class_override=RawRoute, **kwargs)
        return endpoint

    return decorator


class RawRoutes:
    """ASGI middleware: a POST whose path matches a RawRoute of the app's table goes straight to its handler
    (scope["route"] set as the router would, for the metrics' labels); anything else to the app."""

    def __init__(self, app, routes: list[BaseRoute]):
        self.app = app
        self.routes = [(r.path_regex.match, r) for r in routes if isinstance(r, RawRoute)]

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["method"] == "POST":
            for match, route in self.routes:
                if m := match(scope["path"]):
                    scope["route"], scope["path_params"] = route, m.groupdict()
                    request = Request(scope, receive)
                    try:
                        response = await route.endpoint(scope["path_params"]["name"], request)
                    except Exception as exc:  # noqa: BLE001 - every failure gets the one error model's answer
                        response = refused(request, exc)
                    return await response(scope, receive, send)
        await self.app(scope, receive, send)
