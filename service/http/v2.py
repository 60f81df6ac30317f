"""The V2 inference protocol over HTTP, as Triton speaks it, so `tritonclient.http` and the KServe SDK work
unchanged: JSON (and the binary tensor extension) <-> the data plane's types (service/v2), nothing more.
Errors are `{"error": msg}`. The operations themselves, their checks and shapes are service/v2's."""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
from fastapi import APIRouter, Request, Response

from rnnserve.service.core.errors import BadRequest, InvalidInput, echo
from rnnserve.service.http.body import VERSION_PARAMETER, check_json, json_response, parse, path_version
from rnnserve.service.http.context import dataplane, server
from rnnserve.service.http.generation import event_stream, start_generation
from rnnserve.service.http.raw import raw_post
from rnnserve.service.http.schemas import V2Error, V2GenerateRequest
from rnnserve.service.rollout.plan import routing
from rnnserve.service.runtime.generator import Sampling, TextGenerator
from rnnserve.service.v2 import tensors
from rnnserve.service.v2.dataplane import DataPlane
from rnnserve.service.v2.types import InferRequest, InferResponse, RequestedOutput, Tensor

V2_ERRORS: dict[int | str, dict] = {code: {"model": V2Error}
                                    for code in (400, 401, 403, 404, 409, 413, 415, 422, 503)}
router = APIRouter(prefix="/v2", tags=["v2 (Open Inference Protocol)"], responses=V2_ERRORS)
HEADER_LENGTH = "Inference-Header-Content-Length"
HTTP_EXTENSIONS = ["binary_tensor_data", "generate"]

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
async def server_metadata(request: Request) -> dict:
    return dataplane(request).server_metadata(HTTP_EXTENSIONS)


@router.get("/health/live", summary="Server liveness")
async def server_live() -> dict:
    return {"live": True}


@router.get("/health/ready", summary="Server readiness")
async def server_ready(request: Request) -> Response:
    ready = dataplane(request).ready()
    return json_response({"ready": ready}, status_code=200 if ready else 503)


@router.get("/models/stats", summary="Statistics extension: every loaded model version's")
async def server_statistics(request: Request) -> dict:
    return {"model_stats": await dataplane(request).statistics(None, None)}


@router.get("/models/{name}/stats", summary="Statistics of a model's loaded versions")
@router.get("/models/{name}/versions/{version}/stats", summary="Statistics of one model version",
            openapi_extra=VERSION_PARAMETER)
async def model_statistics(name: str, request: Request) -> dict:
    return {"model_stats": await dataplane(request).statistics(name, path_version(request))}


@router.get("/models/{name}", summary="Model metadata")
@router.get("/models/{name}/versions/{version}", summary="Model version metadata", openapi_extra=VERSION_PARAMETER)
async def model_metadata(name: str, request: Request) -> dict:
    return dataplane(request).model_metadata(name, path_version(request))


@router.get("/models/{name}/config", summary="Model configuration (Triton's ModelConfig)")
@router.get("/models/{name}/versions/{version}/config", summary="Model version configuration",
            openapi_extra=VERSION_PARAMETER)
async def model_configuration(name: str, request: Request) -> dict:
    return dataplane(request).model_config(name, path_version(request))


@router.get("/models/{name}/ready", summary="Model readiness")
@router.get("/models/{name}/versions/{version}/ready", summary="Model version readiness",
            openapi_extra=VERSION_PARAMETER)
async def model_ready(name: str, request: Request) -> dict:
    model = dataplane(request).model(name, path_version(request))  # tritonclient reads a non-200 as not ready
    return {"name": model.name, "ready": True}


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
    """/v1 generate's runtime, limits and sampling, under the extension's names."""
    state = server(request)
    model = state.registry.get(name, path_version(request), TextGenerator, lambda m: "use V2 infer instead")
    check_json(request)
    p = body.parameters
    first, chars = await start_generation(state.settings, model, body.text_input,
                                          Sampling(p.max_tokens, p.temperature, p.top_k, p.seed))
    return model, first, chars


@raw_post(router, "/models/{name}/infer", summary="Inference", openapi_extra=INFER_BODY)
@raw_post(router, "/models/{name}/versions/{version}/infer", summary="Inference on one version",
          openapi_extra=INFER_BODY | VERSION_PARAMETER)
async def infer(name: str, request: Request) -> Response:
    plane, version = dataplane(request), path_version(request, resolve=False)
    plane.model(name, version)  # an unknown model is a 404 before the body is read
    routing.set(request.headers)  # a canary's sticky key
    check_json(request, tritonclient=True)
    header_length = request.headers.get(HEADER_LENGTH)
    header, infer_request = await parse(request, lambda body: decode(body, header_length, name, version, plane))
    return encode(await plane.infer(infer_request), header)


def decode(body: bytes, header_length: str | None, name: str, version: str | None,
           plane: DataPlane) -> tuple[dict, InferRequest]:
    """An infer body (JSON, then binary tensor data when Inference-Header-Content-Length says where the JSON
    ends) -> (its JSON header, the request). Every tensor's shape is checked before its data is decoded."""
    header, binary = _split(body, header_length)
    inputs, offset = [], 0
    raw_inputs = header.get("inputs")
    if not isinstance(raw_inputs, list) or not all(isinstance(t, dict) for t in raw_inputs):
        raise InvalidInput("'inputs' must be a list of tensors")
    for item in raw_inputs:
        name_, datatype = item.get("name"), item.get("datatype")
        shape = tensors.declared_shape(name_, datatype, item.get("shape"), plane.max_rows)
        size = _parameters(item).get("binary_data_size")
        if size is not None:
            if type(size) is not int or not 0 <= size <= len(binary) - offset:
                raise BadRequest(f"binary_data_size {echo(size)} of input {echo(name_)} does not fit the "
                                 f"{len(binary) - offset} binary bytes left")
            chunk, offset = binary[offset:offset + size], offset + size
            data = tensors.decode_bytes(chunk, shape) if datatype == "BYTES" else tensors.decode_fp32(chunk, shape)
        elif isinstance(item.get("data"), list):
            data = _json_data(item["data"], datatype, shape)
        else:
            raise InvalidInput(f"input {echo(name_)} needs 'data' (or binary data)")
        inputs.append(Tensor(str(name_), str(datatype), shape, data))
    if offset != len(binary):
        raise BadRequest(f"{len(binary) - offset} bytes of binary data belong to no input")
    outputs = header.get("outputs", [])
    if not isinstance(outputs, list) or not all(isinstance(o, dict) for o in outputs):
        raise InvalidInput("'outputs' must be a list of {name, parameters}")
    request_id = header.get("id")
    return header, InferRequest(
        name, version, inputs, [RequestedOutput(str(o.get("name")), _parameters(o)) for o in outputs],
        _parameters(header), None if request_id is None else str(request_id))


def encode(response: InferResponse, header: dict) -> Response:
    """The answer as JSON, with the outputs asked for as binary (binary_data, or binary_data_output for all)
    after it."""
    default = _flag(_parameters(header), "binary_data_output", False)
    binary_of = {o.get("name"): _flag(_parameters(o), "binary_data", default) for o in header.get("outputs", [])}
    outputs, blobs = [], []
    for tensor in response.outputs:
        entry: dict[str, Any] = {"name": tensor.name, "datatype": tensor.datatype, "shape": tensor.shape}
        if binary_of.get(tensor.name, default):
            raw = tensors.raw_bytes(tensor.data)
            entry["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        else:
            entry["data"] = tensor.data.ravel().tolist() if isinstance(tensor.data, np.ndarray) else tensor.data
        outputs.append(entry)
    result: dict[str, Any] = {"model_name": response.model_name, "model_version": response.model_version,
                              "outputs": outputs}
    if response.id is not None:
        result["id"] = response.id
    payload = orjson.dumps(result)
    if not blobs:
        return Response(payload, media_type="application/json")
    return Response(payload + b"".join(blobs), media_type="application/octet-stream",
                    headers={HEADER_LENGTH: str(len(payload))})


def _split(body: bytes, header_length: str | None) -> tuple[dict, bytes]:
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


def _parameters(item: dict) -> dict:
    params = item.get("parameters", {})
    if not isinstance(params, dict):
        raise InvalidInput(f"'parameters' must be an object, not {echo(params)}")
    return params


def _flag(params: dict, key: str, default: bool) -> bool:
    """A boolean parameter: JSON true or false, nothing else ("no" is not false)."""
    value = params.get(key, default)
    if not isinstance(value, bool):
        raise InvalidInput(f"parameter {key!r} must be true or false, not {echo(value)}")
    return value


def _json_data(data: list, datatype: str, shape: list[int]) -> np.ndarray | list[str]:
    """JSON `data` as the protocol allows it: flat in row-major order, or nested exactly as the shape. BYTES
    elements are strings, FP32 elements JSON numbers (strings and booleans are refused, not converted)."""
    flat = _flatten(data, shape) if data and isinstance(data[0], list) else data
    count = tensors.element_count(shape)
    if len(flat) != count:
        raise InvalidInput(f"shape {shape} says {count} elements but {len(flat)} were sent")
    if datatype == "BYTES":
        if not all(isinstance(t, str) for t in flat):
            raise InvalidInput("every element of a BYTES input must be a string")
        return flat
    if not all(type(v) is float or type(v) is int for v in flat):  # bool is an int subclass: type(), not isinstance
        raise InvalidInput("'data' of an FP32 input must be JSON numbers (flat, or nested as the shape)")
    return tensors.fp32_array(flat, shape)


def _flatten(data: list, shape: list[int]) -> list:
    flat: list = []

    def walk(x, dims: list[int]) -> None:
        if not isinstance(x, list) or len(x) != dims[0]:
            raise InvalidInput(f"nested 'data' must follow the shape {shape} exactly (or be flat, row-major)")
        if len(dims) == 1:
            flat.extend(x)
        else:
            for item in x:
                walk(item, dims[1:])

    walk(data, shape)
    return flat
