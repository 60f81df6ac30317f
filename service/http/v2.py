"""Open Inference Protocol (KServe V2) over HTTP, as Triton speaks it, so `tritonclient.http` works unchanged.

Text classifiers take one BYTES tensor `text` [N]; numeric-sequence models one FP32 tensor `sequences`
[N, T, F] (JSON `data`, flat or nested, or the binary tensor extension). Outputs: classifiers `probabilities`
(FP32 [N, C]) and `label` (BYTES [N]); regression `values` (FP32 [N, 1] or [N, T, 1]); as JSON or binary as
the client asks. Errors are `{"error": msg}`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import orjson
from fastapi import APIRouter, Request, Response

from rnnserve import __version__
from rnnserve.service.core.errors import BadRequest, InvalidInput, echo
from rnnserve.service.http.body import VERSION_PARAMETER, check_json, json_response, parse, path_version
from rnnserve.service.http.codecs import (
    check_classification,
    codec_for,
    inference,
    model_config,
    output_names,
    top_classes,
)
from rnnserve.service.http.raw import raw_post
from rnnserve.service.http.responses import model_stats
from rnnserve.service.http.schemas import V2Error, V2GenerateRequest
from rnnserve.service.http.tensors import encode_bytes
from rnnserve.service.http.v1 import event_stream, start_generation
from rnnserve.service.runtime.base import ModelRuntime
from rnnserve.service.runtime.generator import Sampling

V2_ERRORS: dict[int | str, dict] = {code: {"model": V2Error} for code in (400, 401, 403, 404, 409, 413, 415, 422, 503)}
router = APIRouter(prefix="/v2", tags=["v2 (Open Inference Protocol)"], responses=V2_ERRORS)
HEADER_LENGTH = "Inference-Header-Content-Length"

INFER_BODY = {
    "requestBody": {"required": True, "content": {"application/json": {"schema": {
        "type": "object", "required": ["inputs"],
        "properties": {
            "id": {"type": "string"},
            "parameters": {"type": "object"},
            "inputs": {"type": "array", "minItems": 1, "items": {
                "type": "object", "required": ["name", "shape", "datatype"],
                "properties": {"name": {"type": "string"}, "shape": {"type": "array", "items": {"type": "integer"}},
                               "datatype": {"type": "string", "enum": ["BYTES", "FP32"]},
                               "parameters": {"type": "object"},
                               "data": {"type": "array", "items": {}}}}},
            "outputs": {"type": "array", "items": {"type": "object", "required": ["name"], "properties": {
                "name": {"type": "string"}, "parameters": {"type": "object"}}}},
        }}}}}
}


@router.get("", summary="Server metadata")
async def server_metadata() -> dict:
    return {"name": "rnnserve", "version": __version__,
            "extensions": ["binary_tensor_data", "classification", "generate", "model_configuration",
                           "model_repository", "sequence", "sequence(string_id)", "statistics"]}


@router.get("/health/live", summary="Server liveness")
async def server_live() -> dict:
    return {"live": True}


@router.get("/health/ready", summary="Server readiness")
async def server_ready(request: Request) -> Response:
    ready = request.app.state.registry.ready
    return json_response({"ready": ready}, status_code=200 if ready else 503)


def metadata_of(model: ModelRuntime) -> dict:
    """A model version's V2 metadata (the versions: its own)."""
    codec = codec_for(model)
    return {"name": model.name, "versions": [str(model.version)], "platform": "onnxruntime_onnx",
            "inputs": codec.v2_inputs(model), "outputs": codec.v2_outputs(model),
            "parameters": {"task": model.task, "labels": model.labels, "maxlen": model.package.maxlen}}


@router.get("/models/stats", summary="Statistics extension: every loaded model version's")
async def server_statistics(request: Request) -> dict:
    return await _statistics(request, None)


@router.get("/models/{name}/stats", summary="Statistics of a model's loaded versions")
@router.get("/models/{name}/versions/{version}/stats", summary="Statistics of one model version",
            openapi_extra=VERSION_PARAMETER)
async def model_statistics(name: str, request: Request) -> dict:
    return await _statistics(request, name)


async def _statistics(request: Request, name: str | None) -> dict:
    state = request.app.state
    figures = await state.metrics.read_statistics()
    return {"model_stats": model_stats(state.registry, figures, name, path_version(request))}


@router.get("/models/{name}", summary="Model metadata")
@router.get("/models/{name}/versions/{version}", summary="Model version metadata", openapi_extra=VERSION_PARAMETER)
async def model_metadata(name: str, request: Request) -> dict:
    registry, version = request.app.state.registry, path_version(request)
    meta = metadata_of(registry.get(name, version))
    if version is None:
        meta["versions"] = [str(v) for v in sorted(registry.versions(name))]
    return meta


@router.post("/models/{name}/generate", summary="Generate extension: text_input -> text_output (language models)")
@router.post("/models/{name}/versions/{version}/generate", summary="Generate with one version",
             openapi_extra=VERSION_PARAMETER)
async def generate(name: str, request: Request, body: V2GenerateRequest) -> Response:
    model, first, chars = await _generation(name, request, body)
    text = first + "".join([c async for c in chars])
    return json_response({"model_name": model.name, "model_version": str(model.version), "text_output": text})


@router.post("/models/{name}/generate_stream", summary="Generate extension, streamed: one server-sent event a "
             "character, each {model_name, model_version, text_output}")
@router.post("/models/{name}/versions/{version}/generate_stream", summary="Generate with one version, streamed",
             openapi_extra=VERSION_PARAMETER)
async def generate_stream(name: str, request: Request, body: V2GenerateRequest) -> Response:
    model, first, chars = await _generation(name, request, body)
    head = {"model_name": model.name, "model_version": str(model.version)}
    return event_stream(first, chars, lambda c: head | {"text_output": c}, lambda text: None)


async def _generation(name: str, request: Request, body: V2GenerateRequest):
    """The /v1 generate's runtime, limits and sampling, under the extension's names."""
    state, version = request.app.state, path_version(request)
    model = state.registry.get(name, version, ("text-generation",))
    check_json(request)
    p = body.parameters
    first, chars = await start_generation(state, model, body.text_input,
                                          Sampling(p.max_tokens, p.temperature, p.top_k, p.seed))
    return model, first, chars


@router.get("/models/{name}/config", summary="Model configuration (Triton's ModelConfig)")
@router.get("/models/{name}/versions/{version}/config", summary="Model version configuration",
            openapi_extra=VERSION_PARAMETER)
async def model_configuration(name: str, request: Request) -> dict:
    return model_config(request.app.state.registry.get(name, path_version(request)))


@router.get("/models/{name}/ready", summary="Model readiness")
@router.get("/models/{name}/versions/{version}/ready", summary="Model version readiness",
            openapi_extra=VERSION_PARAMETER)
async def model_ready(name: str, request: Request) -> dict:
    model = request.app.state.registry.get(name, path_version(request))
    codec_for(model)  # a model this protocol cannot run is no V2 model
    return {"name": model.name, "ready": True}


@raw_post(router, "/models/{name}/infer", summary="Inference", openapi_extra=INFER_BODY)
@raw_post(router, "/models/{name}/versions/{version}/infer", summary="Inference on one version",
          openapi_extra=INFER_BODY | VERSION_PARAMETER)
async def infer(name: str, request: Request) -> Response:
    state, version = request.app.state, path_version(request)
    model = state.registry.get(name, version)  # an unknown model is a 404 before the body is read
    codec = codec_for(model)
    check_json(request, tritonclient=True)
    header_length = request.headers.get(HEADER_LENGTH)

    def decode(body: bytes) -> tuple[dict, Sequence]:
        header, binary = _split_body(body, header_length)
        return header, codec.decode_v2(model, header, binary, state.settings)

    header, rows = await parse(request, decode)
    wanted = _requested_outputs(header, output_names(model))  # checked before the model runs
    for _, _, classes in wanted:
        if classes is not None:
            check_classification(model, classes)
    model, out = await state.registry.call(name, version, inference(state.sequences, header, rows))
    tensors = codec.encode_v2(model, out)
    outputs, blobs = [], []
    for out_name, binary_out, classes in wanted:
        value = tensors[out_name] if classes is None else top_classes(model, tensors[out_name], classes)
        tensor: dict[str, Any]
        if isinstance(value, np.ndarray):
            tensor = {"name": out_name, "datatype": "FP32", "shape": list(value.shape)}
            raw, data = value.astype("<f4").tobytes(), value.ravel().tolist()
        elif classes is not None:  # [N, k] strings
            data = [c for row in value for c in row]
            tensor = {"name": out_name, "datatype": "BYTES", "shape": [len(value), len(value[0]) if value else 0]}
            raw = encode_bytes(data)
        else:
            tensor = {"name": out_name, "datatype": "BYTES", "shape": [len(value)]}
            raw, data = encode_bytes(value), value
        if binary_out:
            tensor["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        else:
            tensor["data"] = data
        outputs.append(tensor)
    result: dict[str, Any] = {"model_name": model.name, "model_version": str(model.version), "outputs": outputs}
    if "id" in header:
        result["id"] = header["id"]
    payload = orjson.dumps(result)
    if not blobs:
        return Response(payload, media_type="application/json")
    return Response(payload + b"".join(blobs), media_type="application/octet-stream",
                    headers={HEADER_LENGTH: str(len(payload))})


def _split_body(body: bytes, header_length: str | None) -> tuple[dict, bytes]:
    if header_length is None:
        json_part, binary = body, b""
    else:
        try:
            n = int(header_length)
        except ValueError:
            raise BadRequest(f"{HEADER_LENGTH} must be an integer") from None
        if not 0 <= n <= len(body):
            raise BadRequest(f"{HEADER_LENGTH} {n} is outside the body of {len(body)} bytes")
        json_part, binary = body[:n], body[n:]
    try:
        header = orjson.loads(json_part)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"request is not valid JSON: {exc}") from None
    if not isinstance(header, dict):
        raise InvalidInput("inference request must be a JSON object")
    return header, binary


def _flag(params, key: str, default: bool) -> bool:
    """A boolean parameter: JSON true or false, nothing else ("no" is not false)."""
    value = params.get(key, default) if isinstance(params, dict) else default
    if not isinstance(value, bool):
        raise InvalidInput(f"parameter {key!r} must be true or false, not {echo(value)}")
    return value


def _requested_outputs(header: dict, names: list[str]) -> list[tuple[str, bool, object]]:
    """(name, binary, classification k or None) of each output to send."""
    default_binary = _flag(header.get("parameters"), "binary_data_output", False)
    outputs = header.get("outputs")
    if outputs is None:
        return [(name, default_binary, None) for name in names]
    if not isinstance(outputs, list):
        raise InvalidInput("'outputs' must be a list")
    wanted = []
    for out in outputs:
        name = out.get("name") if isinstance(out, dict) else None
        if name not in names:
            raise InvalidInput(f"unknown output {echo(name)}; outputs are {' and '.join(map(repr, names))}")
        params = out.get("parameters") if isinstance(out.get("parameters"), dict) else {}
        wanted.append((name, _flag(params, "binary_data", default_binary), params.get("classification")))
    return wanted


