"""Triton's model repository extension over HTTP: list the repository, load (or reload) and unload models
without a restart, through the data plane. Behind the API key when keys are set, like every non-health route; a
browser's request from another origin is refused by the middleware, and a body (Triton's optional JSON
parameters: the index's `ready`, a load's `config`) must be JSON or untyped, as tritonclient sends it."""

from __future__ import annotations

import orjson
from fastapi import APIRouter, Request

from rnnserve.service.core.errors import BadRequest, echo
from rnnserve.service.http.body import check_json
from rnnserve.service.http.context import dataplane
from rnnserve.service.http.v2 import V2_ERRORS

router = APIRouter(prefix="/v2/repository", tags=["v2 (Open Inference Protocol)"], responses=V2_ERRORS)


async def _body(request: Request) -> dict:
    """The optional JSON body: {} when empty, else an object (BadRequest otherwise)."""
    check_json(request, tritonclient=True)
    raw = await request.body()
    if not raw.strip():
        return {}
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise BadRequest("request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise BadRequest(f"request body must be a JSON object, not {echo(body)}")
    return body


@router.post("/index", summary="Every model version in the repository, with its state ({\"ready\": true}: the "
             "ready ones)")
async def index(request: Request) -> list[dict]:
    ready = (await _body(request)).get("ready", False)
    if not isinstance(ready, bool):
        raise BadRequest(f"'ready' must be true or false, not {echo(ready)}")
    return dataplane(request).repository_index(ready)


@router.post("/models/{name}/load", summary="Load or reload a model: the new version is validated and warmed "
             "before it replaces the old; if it fails, the old keeps serving. parameters.config (Triton's "
             "ModelConfig as JSON) sets max_batch_size and the dynamic batcher's delay")
async def load_model(name: str, request: Request) -> dict:
    parameters = (await _body(request)).get("parameters", {})
    if not isinstance(parameters, dict):
        raise BadRequest(f"'parameters' must be an object, not {echo(parameters)}")
    await dataplane(request).load(name, parameters.get("config"))
    return {}


@router.post("/models/{name}/unload", summary="Unload a model; requests already queued finish first")
async def unload_model(name: str, request: Request) -> dict:
    await _body(request)
    await dataplane(request).unload(name)
    return {}
