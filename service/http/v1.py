"""/v1: the service's own JSON API: model listing, classification (texts or numeric sequences), regression,
explanations and text generation.

The predict handlers (the hot path) read their body themselves (pydantic-core straight from bytes, orjson
out) rather than through FastAPI's dependency and body machinery: the same validation for a fraction of the
cost per request; their request model still documents the body in OpenAPI. Explanations and generation take
ordinary request models."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import orjson
from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import FileResponse

from rnnserve.service.core.errors import BadRequest, InvalidInput, NotFound, PayloadTooLarge, echo
from rnnserve.service.http.body import (
    LABEL_PARAMETER,
    OFF_LOOP_BYTES,
    VERSION_PARAMETER,
    check_json,
    json_response,
    model_parser,
    parse,
    path_version,
)
from rnnserve.service.http.codecs import codec_for, usage
from rnnserve.service.http.context import dataplane, server
from rnnserve.service.http.generation import event_stream, start_generation
from rnnserve.service.http.raw import raw_post
from rnnserve.service.http.responses import to_predictions
from rnnserve.service.http.schemas import (
    ErrorResponse,
    ExplainRequest,
    ExplainResponse,
    GenerateRequest,
    GenerateResponse,
    ModelList,
    PredictRequest,
    PredictResponse,
)
from rnnserve.service.registry import Registry
from rnnserve.service.rollout.plan import Rollouts, routing
from rnnserve.service.runtime.base import ModelRuntime
from rnnserve.service.runtime.generator import Sampling, TextGenerator
from rnnserve.service.runtime.text import TextClassifier
from rnnserve.service.v2.codecs import check_text_limits

ERRORS: dict[int | str, dict] = {code: {"model": ErrorResponse} for code in (400, 401, 403, 404, 413, 415, 422, 503)}
R = TypeVar("R", bound=ModelRuntime)
router = APIRouter(prefix="/v1", tags=["v1"], responses=ERRORS)
PREDICT_BODY = {"requestBody": {"required": True, "content": {"application/json": {
    "schema": PredictRequest.model_json_schema()}}}}
parse_predict = model_parser(PredictRequest)


def model_taking(runtime: type[R]) -> Callable:
    """A dependency of the routes with an ordinary request model: the model version the path names (404, or
    422 wrong_task naming the operation to use), then a body declared JSON (415) and present (400), before
    FastAPI validates it (422), in the order /predict checks them. Only a body that is not JSON at all is
    refused before (400): FastAPI decodes it first."""
    async def model_named(name: str, request: Request) -> ModelRuntime:
        model = server(request).registry.get(name, path_version(request), runtime, usage)
        check_json(request)
        if not await request.body():
            raise BadRequest("request body is not valid JSON: it is empty")
        return model

    return model_named


CLASSIFIER, GENERATOR = Depends(model_taking(TextClassifier)), Depends(model_taking(TextGenerator))


@router.get("/models", response_model=ModelList, summary="Every model in the repository, failed ones with reasons")
async def list_models(request: Request) -> dict:
    state = server(request)
    return {"models": [model_listing(state.registry, state.control.rollouts, name) for name in state.registry.names()]}


@router.get("/models/{name}", summary="One model: versions, labels, architecture, metrics, provider")
async def get_model(name: str, request: Request) -> dict:
    state = server(request)
    return model_listing(state.registry, state.control.rollouts, name)


def model_listing(registry: Registry, rollouts: Rollouts, name: str) -> dict:
    """/v1/models/{name}: the newest loaded version described, every loaded version, the failed ones with
    their reasons, and the rollout in force (version labels, canary, shadow). NotFound (404) for a name the
    registry has not seen."""
    versions, failed = registry.versions(name), registry.failed(name)
    if not versions and not failed:
        raise NotFound(f"model {echo(name)} not found")
    # A version in the registry has loaded, been checked and warmed: ready.
    described = [codec_for(model).describe(model) | {"state": "ready"} for _, model in sorted(versions.items())]
    latest = described[-1] if described else {"name": name, "state": "failed"}
    return latest | {"versions": described,
                     "failed_versions": [{"version": v, "reason": r} for v, r in sorted(failed.items())],
                     "rollout": rollouts.describe(name)}


@router.get("/models/{name}/drift", summary="Drift of the newest version: reference and live histograms, scores")
@router.get("/models/{name}/versions/{version}/drift", openapi_extra=VERSION_PARAMETER,
            summary="Drift of one version: reference and live histograms, scores")
async def drift(name: str, request: Request) -> dict:
    """The version's drift report (service/drift.py; docs/drift.md), computed in the background: each signal's
    reference and live histograms and PSI, the window; or `available: false` with the reason."""
    state = server(request)
    return state.drift.report(state.registry.get(name, path_version(request)))


@router.get("/models/{name}/files/{filename}", response_class=FileResponse,
            responses={200: {"content": {"image/png": {}}}}, summary="A training plot of the newest version")
@router.get("/models/{name}/versions/{version}/files/{filename}", response_class=FileResponse,
            responses={200: {"content": {"image/png": {}}}}, openapi_extra=VERSION_PARAMETER,
            summary="A training plot of one version")
@router.get("/models/{name}/labels/{label}/files/{filename}", response_class=FileResponse,
            responses={200: {"content": {"image/png": {}}}}, openapi_extra=LABEL_PARAMETER,
            summary="A training plot of a labelled version")
async def plot(name: str, filename: str, request: Request) -> FileResponse:
    package = server(request).registry.get(name, path_version(request)).package
    if filename not in package.plots:  # only the package's own plots: no other file, no path
        raise NotFound(f"model {echo(name)} has no plot {echo(filename)}; it has {package.plots}")
    path = package.path / filename
    signature = b"\x89PNG\r\n\x1a\n"  # served as image/png: anything else (HTML, a script) is not passed off as one
    with open(path, "rb") as fh:
        if fh.read(len(signature)) != signature:
            raise NotFound(f"model {echo(name)} has no plot {echo(filename)}: the file is not a PNG image")
    return FileResponse(path, media_type="image/png")


@raw_post(router, "/models/{name}/predict", response_model=PredictResponse, response_model_exclude_none=True,
          openapi_extra=PREDICT_BODY, summary="Classify texts with the newest version")
@raw_post(router, "/models/{name}/versions/{version}/predict", response_model=PredictResponse,
          response_model_exclude_none=True, openapi_extra=PREDICT_BODY | VERSION_PARAMETER,
          summary="Classify texts with one version")
@raw_post(router, "/models/{name}/labels/{label}/predict", response_model=PredictResponse,
          response_model_exclude_none=True, openapi_extra=PREDICT_BODY | LABEL_PARAMETER,
          summary="Classify texts with a labelled version")
async def predict(name: str, request: Request) -> Response:
    state, version = server(request), path_version(request, resolve=False)
    plane = dataplane(request)
    model = state.registry.get(name, plane.resolve(name, version))  # an unknown model is a 404 before the body
    routing.set(request.headers)  # a canary's sticky key
    codec = codec_for(model)
    check_json(request)
    body = await parse(request, lambda raw: parse_predict(_counted(raw, state.settings.max_texts_per_request)))
    rows = codec.decode(model, body, state.settings)
    model, out = await plane.predict(name, version, rows, "v1")
    return json_response({"model": model.name, "version": model.version,
                          "predictions": codec.encode(model, out, body)})


def _counted(raw: bytes, limit: int) -> bytes:
    """Refuse too many texts or sequences before validating them: pydantic checks a list's length after
    validating every item (380,000 sequences took 1.6 s and 1.4 GB to refuse), orjson counts in a fraction.
    Only bodies too large for the event loop can hold that many items; smaller ones pass as they are."""
    if len(raw) >= OFF_LOOP_BYTES:
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return raw  # the validation says what is wrong with it
        for key in ("texts", "sequences"):
            items = data.get(key) if isinstance(data, dict) else None
            if isinstance(items, list) and len(items) > limit:
                raise PayloadTooLarge(f"{len(items)} {key} in one request; the limit is {limit}")
    return raw


@router.post("/models/{name}/generate", response_model=GenerateResponse,
             responses={200: {"content": {"text/event-stream": {}}}},
             summary="Continue a prompt with a character language model (JSON, or server-sent events)")
@router.post("/models/{name}/versions/{version}/generate", response_model=GenerateResponse,
             openapi_extra=VERSION_PARAMETER, responses={200: {"content": {"text/event-stream": {}}}},
             summary="Generate with one version")
@router.post("/models/{name}/labels/{label}/generate", response_model=GenerateResponse,
             openapi_extra=LABEL_PARAMETER, responses={200: {"content": {"text/event-stream": {}}}},
             summary="Generate with a labelled version")
async def generate(body: GenerateRequest, request: Request,
                   model: TextGenerator = GENERATOR) -> Response:
    first, chars = await start_generation(server(request).settings, model, body.prompt,
                                          Sampling(body.max_chars, body.temperature, body.top_k, body.seed))
    if body.stream:
        return event_stream(first, chars, lambda c: {"text": c},
                            lambda text: b"event: done\ndata: " + orjson.dumps({"text": text, "chars": len(text)}))
    text = first + "".join([c async for c in chars])
    return json_response({"model": model.name, "version": model.version, "prompt": body.prompt, "text": text,
                          "chars": len(text), "seed": body.seed})


@router.post("/models/{name}/explain", response_model=ExplainResponse,
             summary="Each word's contribution to a label's probability, by occlusion")
@router.post("/models/{name}/versions/{version}/explain", response_model=ExplainResponse,
             openapi_extra=VERSION_PARAMETER, summary="Explain with one version")
@router.post("/models/{name}/labels/{label}/explain", response_model=ExplainResponse,
             openapi_extra=LABEL_PARAMETER, summary="Explain with a labelled version")
async def explain(name: str, body: ExplainRequest, request: Request,
                  model: TextClassifier = CLASSIFIER) -> Response:
    state, version = server(request), path_version(request)
    check_text_limits([body.text], 1, state.settings.max_text_chars)
    if body.label is not None and body.label not in model.labels:
        raise InvalidInput(f"label {echo(body.label)} is not one of the model's labels: {model.labels}")
    label = None if body.label is None else model.labels.index(body.label)
    model, out = await state.registry.call(name, version, lambda m: m.explain(
        body.text, label, body.method, body.window, max_words=state.settings.max_explain_words,
        max_explanations=state.settings.per_worker(state.settings.max_explanations)))
    prediction = to_predictions(model.labels, out.prediction, top_k=len(model.labels), return_probabilities=True)
    return json_response({"model": model.name, "version": model.version, "prediction": prediction[0],
                          "label": model.labels[out.label], "method": out.method, "window": out.window,
                          "runs": out.runs, "words": [w.to_dict() for w in out.words]})
