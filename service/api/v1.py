"""/v1: the service's own JSON API: model listing and text classification.

The predict handlers read their body themselves (pydantic-core straight from bytes, orjson out) rather
than through FastAPI's dependency and body machinery: the same validation for a fraction of the cost per
request. The request model still documents the body in OpenAPI."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from service.api.body import VERSION_PARAMETER, check_json, json_response, model_parser, parse, path_version
from service.api.schemas import ErrorResponse, ModelList, PredictRequest, PredictResponse
from service.predict import check_limits, to_predictions

ERRORS = {code: {"model": ErrorResponse} for code in (400, 401, 404, 413, 415, 422, 503)}
router = APIRouter(prefix="/v1", tags=["v1"], responses=ERRORS)
PREDICT_BODY = {"requestBody": {"required": True, "content": {"application/json": {
    "schema": PredictRequest.model_json_schema()}}}}
parse_predict = model_parser(PredictRequest)


@router.get("/models", response_model=ModelList, summary="Every model in the repository, failed ones with reasons")
async def list_models(request: Request) -> dict:
    registry = request.app.state.registry
    return {"models": [registry.describe(name) for name in registry.names()]}


@router.get("/models/{name}", summary="One model: versions, labels, architecture, metrics, provider")
async def get_model(name: str, request: Request) -> dict:
    return request.app.state.registry.describe(name)


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
