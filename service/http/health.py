"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST

from rnnserve.service.http.body import json_response
from rnnserve.service.http.context import server
from rnnserve.service.http.schemas import ErrorResponse, Health

router = APIRouter(tags=["health"], responses={401: {"model": ErrorResponse}})


@router.get("/health/live", response_model=Health, response_model_exclude_none=True, summary="The process is up")
async def live() -> dict:
    return {"status": "live"}


@router.get("/health/ready", response_model=Health, responses={503: {"model": Health}},
            summary="200 once every valid model is loaded and warmed up")
async def ready(request: Request) -> Response:
    state = server(request)
    registry = state.registry
    loaded, failed = registry.counts()
    body: dict = {"status": "ready" if registry.ready else "loading", "models_loaded": loaded,
                  "models_failed": failed}
    # What does not work, said: once the models are loaded it is no reason to take the server out of service.
    if problems := state.problems():
        body["problems"] = problems
    return json_response(body, status_code=200 if registry.ready else 503)


@router.get("/metrics", summary="Prometheus metrics", response_class=Response,
            responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}})
async def metrics(request: Request) -> Response:
    return Response(server(request).metrics.exposition(), media_type=CONTENT_TYPE_LATEST)
