"""/v1: the service's own JSON API: model listing and text classification."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from service.api.deps import RegistryDep, SettingsDep
from service.api.schemas import ErrorResponse, ModelList, PredictRequest, PredictResponse
from service.predict import check_limits, classify, to_predictions

ERRORS = {code: {"model": ErrorResponse} for code in (400, 401, 404, 413, 415, 422, 503)}
router = APIRouter(prefix="/v1", tags=["v1"], responses=ERRORS)


@router.get("/models", response_model=ModelList, summary="Every model in the repository, failed ones with reasons")
async def list_models(registry: RegistryDep) -> dict:
    return {"models": [registry.describe(name) for name in registry.names()]}


@router.get("/models/{name}", summary="One model: versions, labels, architecture, metrics, provider")
async def get_model(name: str, registry: RegistryDep) -> dict:
    return registry.describe(name)


async def _predict(name: str, version: str | None, body: PredictRequest, registry: RegistryDep,
                   settings: SettingsDep) -> JSONResponse:
    model = registry.get(name, version)
    texts = body.all_texts
    check_limits(texts, settings.max_texts_per_request, settings.max_text_chars)
    probs, stats = await classify(model, texts)
    # A Response skips FastAPI's re-validation of the output (response_model still documents it).
    return JSONResponse({"model": model.name, "version": model.version,
                         "predictions": to_predictions(model.labels, probs, stats, body.top_k,
                                                       body.return_probabilities)})


@router.post("/models/{name}/predict", response_model=PredictResponse, response_model_exclude_none=True,
             summary="Classify texts with the newest version")
async def predict(name: str, body: PredictRequest, registry: RegistryDep, settings: SettingsDep) -> JSONResponse:
    return await _predict(name, None, body, registry, settings)


@router.post("/models/{name}/versions/{version}/predict", response_model=PredictResponse,
             response_model_exclude_none=True, summary="Classify texts with one version")
async def predict_version(name: str, version: str, body: PredictRequest, registry: RegistryDep,
                          settings: SettingsDep) -> JSONResponse:
    return await _predict(name, version, body, registry, settings)
