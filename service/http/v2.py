"""Open Inference Protocol (KServe V2) over HTTP, as Triton speaks it, so `tritonclient.http` works unchanged.

Text classifiers take one BYTES tensor `text` [N]; numeric-sequence models one FP32 tensor `sequences`
[N, T, F] (JSON `data`, flat or nested, or the binary tensor extension). Outputs: classifiers `probabilities`
(FP32 [N, C]) and `label` (BYTES [N]); regression `values` (FP32 [N, 1] or [N, T, 1]); as JSON or binary as
the client asks. Errors are `{"error": msg}`.
"""

from __future__ import annotations

import struct
from typing import Any

import numpy as np
import orjson
from fastapi import APIRouter, Request, Response

from rnnserve import __version__
from rnnserve.service.core.errors import BadRequest, InvalidInput, PayloadTooLarge, echo
from rnnserve.service.http.body import VERSION_PARAMETER, check_json, check_limits, json_response, parse, path_version
from rnnserve.service.http.schemas import V2Error
from rnnserve.service.runtime.base import ModelRuntime

V2_ERRORS = {code: {"model": V2Error} for code in (400, 401, 403, 404, 413, 415, 422, 503)}
router = APIRouter(prefix="/v2", tags=["v2 (Open Inference Protocol)"], responses=V2_ERRORS)
HEADER_LENGTH = "Inference-Header-Content-Length"
INPUT_NAME, PROBS_NAME, LABEL_NAME = "text", "probabilities", "label"
SEQUENCES_NAME, VALUES_NAME = "sequences", "values"
TASKS = ("text-classification", "sequence-classification", "sequence-regression")

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
    return {"name": "rnnserve", "version": __version__, "extensions": ["binary_tensor_data"]}


@router.get("/health/live", summary="Server liveness")
async def server_live() -> dict:
    return {"live": True}


@router.get("/health/ready", summary="Server readiness")
async def server_ready(request: Request) -> Response:
    ready = request.app.state.registry.ready
    return json_response({"ready": ready}, status_code=200 if ready else 503)


def _metadata(model: ModelRuntime) -> dict:
    if model.task == "text-classification":
        inputs = [{"name": INPUT_NAME, "datatype": "BYTES", "shape": [-1]}]
    else:
        inputs = [{"name": SEQUENCES_NAME, "datatype": "FP32", "shape": [-1, *model.shape]}]
    if model.labels:
        outputs = [{"name": PROBS_NAME, "datatype": "FP32", "shape": [-1, len(model.labels)]},
                   {"name": LABEL_NAME, "datatype": "BYTES", "shape": [-1]}]
    else:
        out_shape = model.package.metadata.output.shape[1:]
        outputs = [{"name": VALUES_NAME, "datatype": "FP32", "shape": [-1, *out_shape]}]
    return {"name": model.name, "versions": [str(model.version)], "platform": "onnxruntime_onnx", "inputs": inputs,
            "outputs": outputs, "parameters": {"task": model.task, "labels": model.labels,
                                               "maxlen": model.package.maxlen}}


@router.get("/models/{name}", summary="Model metadata")
@router.get("/models/{name}/versions/{version}", summary="Model version metadata", openapi_extra=VERSION_PARAMETER)
async def model_metadata(name: str, request: Request) -> dict:
    registry, version = request.app.state.registry, path_version(request)
    meta = _metadata(registry.get(name, version, TASKS))
    if version is None:
        meta["versions"] = [str(v) for v in sorted(registry.models[name])]
    return meta


@router.get("/models/{name}/ready", summary="Model readiness")
@router.get("/models/{name}/versions/{version}/ready", summary="Model version readiness",
            openapi_extra=VERSION_PARAMETER)
async def model_ready(name: str, request: Request) -> dict:
    model = request.app.state.registry.get(name, path_version(request), TASKS)
    return {"name": model.name, "ready": True}


@router.post("/models/{name}/infer", summary="Inference", openapi_extra=INFER_BODY)
@router.post("/models/{name}/versions/{version}/infer", summary="Inference on one version",
             openapi_extra=INFER_BODY | VERSION_PARAMETER)
async def infer(name: str, request: Request) -> Response:
    state, version = request.app.state, path_version(request)
    model = state.registry.get(name, version, TASKS)  # an unknown model is a 404 before the body is read
    check_json(request, tritonclient=True)
    header_length = request.headers.get(HEADER_LENGTH)
    limit = state.settings.max_texts_per_request
    if model.task == "text-classification":
        header, texts = await parse(request, lambda body: _read_request(body, header_length, limit))
        check_limits(texts, state.settings.max_texts_per_request, state.settings.max_text_chars)
        model, result = await state.registry.predict(name, version, texts)
        probs = result.probabilities
    else:
        shape = model.shape
        header, x = await parse(request, lambda body: _read_sequence_request(body, header_length, shape, limit))
        model, probs = await state.registry.call(name, version, lambda m: m.predict(m.as_input(x)))
    if model.labels:
        tensors = {PROBS_NAME: probs.astype(np.float32, copy=False),
                   LABEL_NAME: [model.labels[i] for i in probs.argmax(axis=1)]}
    else:
        tensors = {VALUES_NAME: probs.astype(np.float32, copy=False)}
    outputs, blobs = [], []
    for out_name, binary_out in _requested_outputs(header, list(tensors)):
        value = tensors[out_name]
        if isinstance(value, np.ndarray):
            tensor = {"name": out_name, "datatype": "FP32", "shape": list(value.shape)}
            raw, data = value.astype("<f4").tobytes(), value.ravel().tolist()
        else:
            tensor = {"name": out_name, "datatype": "BYTES", "shape": [len(value)]}
            raw, data = _encode_bytes(value), value
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


def _read_request(body: bytes, header_length: str | None, max_texts: int) -> tuple[dict, list[str]]:
    header, binary = _split_body(body, header_length)
    return header, _read_texts(header, binary, max_texts)


def _read_sequence_request(body: bytes, header_length: str | None, shape: tuple[int, int],
                           max_rows: int) -> tuple[dict, np.ndarray]:
    """One FP32 tensor `sequences` [N, T, F]: JSON data (flat, row-major, or nested) or binary little-endian."""
    header, binary = _split_body(body, header_length)
    tensor = _one_input(header, SEQUENCES_NAME, "FP32")
    declared = tensor.get("shape")
    if not (isinstance(declared, list) and len(declared) == 3 and all(type(d) is int for d in declared)
            and declared[0] >= 1 and tuple(declared[1:]) == tuple(shape)):
        raise InvalidInput(f"input shape must be [N, {shape[0]}, {shape[1]}] with N >= 1, got {echo(declared)}")
    if declared[0] > max_rows:  # before decoding anything
        raise PayloadTooLarge(f"{declared[0]} sequences in one request; the limit is {max_rows}")
    count = declared[0] * shape[0] * shape[1]
    size = _binary_size(tensor, binary)
    if size is not None:
        if size != count * 4:
            raise InvalidInput(f"shape {declared} needs {count * 4} bytes of FP32, got {size}")
        return header, np.frombuffer(binary, dtype="<f4").reshape(declared)
    data = tensor.get("data")
    if not isinstance(data, list):
        raise InvalidInput(f"input {SEQUENCES_NAME!r} needs 'data' (or binary data)")
    return header, np.array(_numbers(data, declared), dtype=np.float32).reshape(declared)


def _numbers(data: list, shape: list[int]) -> list:
    """FP32 `data` as the protocol allows it: flat in row-major order, or nested exactly as the shape. JSON
    numbers only: strings and booleans are refused, not converted."""
    if data and isinstance(data[0], list):
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
        data = flat
    count = int(np.prod(shape))
    if len(data) != count:
        raise InvalidInput(f"shape {shape} says {count} numbers but {len(data)} were sent")
    if not all(type(v) is float or type(v) is int for v in data):  # bool is an int subclass: type(), not isinstance
        raise InvalidInput("'data' of an FP32 input must be JSON numbers (flat, or nested as the shape)")
    return data


def _one_input(header: dict, name: str, datatype: str) -> dict:
    inputs = header.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise InvalidInput(f"expected exactly one input tensor named {name!r}")
    tensor = inputs[0]
    if tensor.get("name") != name:
        raise InvalidInput(f"unexpected input {echo(tensor.get('name'))}; this model takes {name!r}")
    if tensor.get("datatype") != datatype:
        raise InvalidInput(f"input {name!r} must have datatype {datatype}, not {echo(tensor.get('datatype'))}")
    return tensor


def _binary_size(tensor: dict, binary: bytes) -> int | None:
    params = tensor.get("parameters") or {}
    size = params.get("binary_data_size") if isinstance(params, dict) else None
    if size is not None and (not isinstance(size, int) or size != len(binary)):
        raise BadRequest(f"binary_data_size {echo(size)} does not match the {len(binary)} binary bytes sent")
    return size


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


def _read_texts(header: dict, binary: bytes, max_texts: int) -> list[str]:
    tensor = _one_input(header, INPUT_NAME, "BYTES")
    shape = tensor.get("shape")
    if (not isinstance(shape, list) or not shape or not all(isinstance(d, int) and d >= 0 for d in shape)
            or any(d != 1 for d in shape[1:])):
        raise InvalidInput(f"input shape must be [N] or [N, 1], got {echo(shape)}")
    if shape[0] > max_texts:  # before decoding anything: counting is cheap, decoding millions of elements is not
        raise PayloadTooLarge(f"{shape[0]} texts in one request; the limit is {max_texts}")
    if _binary_size(tensor, binary) is not None:
        raw = _decode_bytes(binary, shape[0])
        try:
            texts = [b.decode("utf-8") for b in raw]
        except UnicodeDecodeError:
            raise BadRequest("input texts must be UTF-8") from None
    else:
        data = tensor.get("data")
        if not isinstance(data, list):
            raise InvalidInput(f"input {INPUT_NAME!r} needs 'data' (or binary data)")
        texts = _flatten(data)
        if not all(isinstance(t, str) for t in texts):
            raise InvalidInput("every element of a BYTES input must be a string")
    if len(texts) != shape[0]:
        raise InvalidInput(f"shape {shape} says {shape[0]} texts but {len(texts)} were sent")
    if not texts:
        raise InvalidInput("no texts to classify")
    return texts


def _flatten(data: list) -> list:
    """[N] data, or [N, 1] sent nested; anything deeper stays a list and is refused as a non-string."""
    out = []
    for x in data:
        out.extend(x if isinstance(x, list) else [x])
    return out


def _flag(params, key: str, default: bool) -> bool:
    """A boolean parameter: JSON true or false, nothing else ("no" is not false)."""
    value = params.get(key, default) if isinstance(params, dict) else default
    if not isinstance(value, bool):
        raise InvalidInput(f"parameter {key!r} must be true or false, not {echo(value)}")
    return value


def _requested_outputs(header: dict, names: list[str]) -> list[tuple[str, bool]]:
    default_binary = _flag(header.get("parameters"), "binary_data_output", False)
    outputs = header.get("outputs")
    if outputs is None:
        return [(name, default_binary) for name in names]
    if not isinstance(outputs, list):
        raise InvalidInput("'outputs' must be a list")
    wanted = []
    for out in outputs:
        name = out.get("name") if isinstance(out, dict) else None
        if name not in names:
            raise InvalidInput(f"unknown output {echo(name)}; outputs are {' and '.join(map(repr, names))}")
        wanted.append((name, _flag(out.get("parameters"), "binary_data", default_binary)))
    return wanted


def _decode_bytes(buf: bytes, expected: int) -> list[bytes]:
    """Triton's BYTES serialisation: each element is a little-endian uint32 length, then the bytes. Stops
    at the first element beyond the `expected` count the shape declared."""
    out, i = [], 0
    while i < len(buf):
        if len(out) == expected:
            raise InvalidInput(f"shape says {expected} texts but the binary data holds more")
        if i + 4 > len(buf):
            raise BadRequest("truncated BYTES tensor")
        (n,) = struct.unpack_from("<I", buf, i)
        i += 4
        if i + n > len(buf):
            raise BadRequest("truncated BYTES tensor")
        out.append(buf[i:i + n])
        i += n
    return out


def _encode_bytes(items: list[str]) -> bytes:
    parts = []
    for s in items:
        b = s.encode("utf-8")
        parts.append(struct.pack("<I", len(b)) + b)
    return b"".join(parts)
