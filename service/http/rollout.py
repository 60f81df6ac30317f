"""/v1 rollout control (docs/rollout.md): read a model's rollout and its shadow comparison, set the rollout
or one label, promote the canary, roll back. Every change is model control: applied by every worker before the
call answers (service/control.py), and it stands until the model's rollout file changes."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from fastapi import APIRouter, Path, Request, Response
from pydantic import BaseModel, Field

from rnnserve.service.core.errors import NotFound, echo
from rnnserve.service.http.body import check_json, json_response, model_parser, parse
from rnnserve.service.http.context import dataplane, server
from rnnserve.service.http.schemas import ErrorResponse
from rnnserve.service.http.v1 import ERRORS
from rnnserve.service.rollout.plan import LABEL_PATTERN, Rollout
from rnnserve.service.rollout.plan import parse as parse_rollout

router = APIRouter(prefix="/v1/models/{name}", tags=["rollout"], responses=ERRORS | {504: {"model": ErrorResponse}})


class LabelRequest(BaseModel):
    version: int = Field(ge=1, le=999_999_999, description="The version the label names (it need not be loaded "
                         "yet: a label's version that is not ready receives no traffic).")


parse_label = model_parser(LabelRequest)


LABEL = Path(pattern=LABEL_PATTERN, description="A version label: lowercase letters, digits, - and _, first a letter.")


def _model(request: Request, name: str) -> None:
    """NotFound (404) for a name neither loaded nor in the repository, before the body is read."""
    state = server(request)
    state.registry.check_name(name)
    if not state.registry.knows(name) and not (state.settings.models_dir / name).is_dir():
        raise NotFound(f"model {echo(name)} not found")


@router.get("/rollout", summary="The rollout in force (labels, canary, shadow) and the shadow comparison, the "
            "whole server's")
async def get_rollout(name: str, request: Request) -> Response:
    _model(request, name)
    state = server(request)
    comparison = await asyncio.to_thread(dataplane(request).comparisons.summary, name)
    return json_response({"model": name, "rollout": state.control.rollouts.describe(name),
                          "versions": sorted(state.registry.versions(name)), "comparison": comparison})


@router.put("/rollout", summary="Set the whole rollout (labels, canary_share, sticky_header, shadow, "
            "shadow_share) on every worker", openapi_extra={"requestBody": {"required": True, "content": {
                "application/json": {"schema": Rollout.model_json_schema()}}}})
async def put_rollout(name: str, request: Request) -> Response:
    _model(request, name)
    check_json(request)
    body = await parse(request, lambda raw: parse_rollout(raw, "rollout"))
    return await _changed(request, name, lambda _: body)


@router.put("/labels/{label}", summary="Set or move one version label on every worker",
            openapi_extra={"requestBody": {"required": True, "content": {"application/json": {
                "schema": LabelRequest.model_json_schema()}}}})
async def put_label(name: str, request: Request, label: str = LABEL) -> Response:
    _model(request, name)
    check_json(request)
    version = (await parse(request, parse_label)).version
    return await _changed(request, name, lambda r: parse_rollout(
        r.model_dump() | {"labels": r.labels | {label: version}}, "rollout"))


@router.delete("/labels/{label}", summary="Remove one version label on every worker")
async def delete_label(name: str, request: Request, label: str = LABEL) -> Response:
    _model(request, name)

    def without(r: Rollout) -> Rollout:
        r.version_of(name, label)  # NotFound for a label it does not have
        return parse_rollout(r.model_dump() | {"labels": {k: v for k, v in r.labels.items() if k != label}},
                             "rollout")

    return await _changed(request, name, without)


@router.post("/rollout/promote", summary="The canary becomes stable, the split is cleared, on every worker")
async def promote(name: str, request: Request) -> Response:
    return await _changed(request, name, lambda r: r.promoted(name))


@router.post("/rollout/rollback", summary="The canary split and the shadow are cleared, on every worker")
async def rollback(name: str, request: Request) -> Response:
    return await _changed(request, name, lambda r: r.rolled_back())


async def _changed(request: Request, name: str, change: Callable[[Rollout], Rollout]) -> Response:
    rollout = await server(request).control.set_rollout(name, change)
    return json_response({"model": name, "rollout": rollout.model_dump()})
