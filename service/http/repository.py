"""Triton's model repository extension: list the repository, load (or reload) and unload models
without a restart. Behind the API key when keys are set, like every non-health route; a browser's request
from another origin is refused by the middleware, and a body (Triton's optional JSON parameters, which are
not read) must be JSON or untyped, as tritonclient sends it."""

from __future__ import annotations

from fastapi import APIRouter, Request

from rnnserve.service.http.body import check_json
from rnnserve.service.http.responses import repository_index
from rnnserve.service.http.v2 import V2_ERRORS

router = APIRouter(prefix="/v2/repository", tags=["v2 (Open Inference Protocol)"], responses=V2_ERRORS)


@router.post("/index", summary="Every model version in the repository, with its state")
async def index(request: Request) -> list[dict]:
    check_json(request, tritonclient=True)
    return repository_index(request.app.state.registry)


@router.post("/models/{name}/load", summary="Load or reload a model: the new version is validated and warmed "
             "before it replaces the old; if it fails, the old keeps serving")
async def load_model(name: str, request: Request) -> dict:
    check_json(request, tritonclient=True)
    await request.app.state.control.load(name)
    return {}


@router.post("/models/{name}/unload", summary="Unload a model; requests already queued finish first")
async def unload_model(name: str, request: Request) -> dict:
    check_json(request, tritonclient=True)
    await request.app.state.control.unload(name)
    return {}
