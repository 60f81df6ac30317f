"""/v1: the service's own JSON API: model listing and text classification.

The predict handlers read their body themselves (pydantic-core straight from bytes, orjson out) rather
than through FastAPI's dependency and body machinery: the same validation for a fraction of the cost per
request. The request model still documents the body in OpenAPI."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import FileResponse

from service.api.body import VERSION_PARAMETER, check_json, json_response, model_parser, parse, path_version
from service.api.schemas import (ErrorResponse, ExplainRequest, ExplainResponse, ModelList, PredictRequest,
                                 PredictResponse)
from service.errors import InvalidInput, NotFound
from service.predict import check_limits, to_predictions

ERRORS = {code: {"model": ErrorResponse} for code in (400, 401, 404, 413, 415, 422, 503)}
router = APIRouter(prefix="/v1", tags=["v1"], responses=ERRORS)
PREDICT_BODY = {"requestBody": {"required": True, "content": {"application/json": {
    "schema": PredictRequest.model_json_schema()}}}}
parse_predict = model_parser(PredictRequest)
parse_explain = model_parser(ExplainRequest)
EXPLAIN_BODY = {"requestBody": {"required": True, "content": {"application/json": {
    "schema": ExplainRequest.model_json_schema()}}}}


@router.get("/models", response_model=ModelList, summary="Every model in the repository, failed ones with reasons")
async def list_models(request: Request) -> dict:
    registry = request.app.state.registry
    return {"models": [registry.describe(name) for name in registry.names()]}


@router.get("/models/{name}", summary="One model: versions, labels, architecture, metrics, provider")
async def get_model(name: str, request: Request) -> dict:
    return request.app.state.registry.describe(name)


@router.get("/models/{name}/files/{filename}", response_class=FileResponse,
            responses={200: {"content": {"image/png": {}}}}, summary="A training plot of the newest version")
@router.get("/models/{name}/versions/{version}/files/{filename}", response_class=FileResponse,
            responses={200: {"content": {"image/png": {}}}}, openapi_extra=VERSION_PARAMETER,
            summary="A training plot of one version")
async def plot(name: str, filename: str, request: Request) -> FileResponse:
    package = request.app.state.registry.get(name, path_version(request)).package
    if filename not in package.plots:  # only the package's own plots: no other file, no path
        raise NotFound(f"model {name!r} has no plot {filename!r}; it has {package.plots}")
    return FileResponse(package.path / filename, media_type="image/png")


@router.post("/models/{name}/predict", response_model=PredictResponse, response_model_exclude_none=True,
             openapi_extra=PREDICT_BODY, summary="Classify texts with the newest version")
@router.post("/models/{name}/versions/{version}/predict", response_model=PredictResponse,
             response_model_exclude_none=True, openapi_extra=PREDICT_BODY | VERSION_PARAMETER,
             summary="Classify texts with one version")
async def predict(name: str, request: Request) -> Response:
    state, version = request.app.state, path_version(request)
    state.registry.get(name, version)  # an unknown model is a 404 before the body is read
    check_json(request)
    body = await parse(request, parse_predict)
    texts = body.all_texts
    check_limits(texts, state.settings.max_texts_per_request, state.settings.max_text_chars)
    model, result = await state.registry.predict(name, version, texts)
    return json_response({"model": model.name, "version": model.version,
                          "predictions": to_predictions(model.labels, result, body.top_k, body.return_probabilities)})


@router.post("/models/{name}/explain", response_model=ExplainResponse, openapi_extra=EXPLAIN_BODY,
             summary="Each word's contribution to a label's probability, by occlusion")
@router.post("/models/{name}/versions/{version}/explain", response_model=ExplainResponse,
             openapi_extra=EXPLAIN_BODY | VERSION_PARAMETER, summary="Explain with one version")
async def explain(name: str, request: Request) -> Response:
    state, version = request.app.state, path_version(request)
    model = state.registry.get(name, version)
    check_json(request)
    body = await parse(request, parse_explain)
    check_limits([body.text], 1, state.settings.max_text_chars)
    if body.label is not None and body.label not in model.labels:
        raise InvalidInput(f"label {body.label!r} is not one of the model's labels: {model.labels}")
    label = None if body.label is None else model.labels.index(body.label)
    model, out = await state.registry.call(name, version, lambda m: m.explain(
        body.text, label, body.method, body.window, max_words=state.settings.max_explain_words))
    prediction = to_predictions(model.labels, out.prediction, top_k=len(model.labels), return_probabilities=True)
    return json_response({"model": model.name, "version": model.version, "prediction": prediction[0],
                          "label": model.labels[out.label], "method": out.method, "window": out.window,
                          "runs": out.runs, "words": [w.to_dict() for w in out.words]})
