"""ModelInferRequest/Response <-> the V2 data plane the HTTP protocol uses (http/codecs.py, http/tensors.py):
a request's input becomes the header dict and binary tensor data an HTTP request would carry, so both protocols
decode, check and run it with the same code; the codec's output tensors become the response's outputs.

Inputs come in `raw_input_contents` (what tritonclient sends: BYTES as 4-byte little-endian lengths and bytes,
FP32 flat little-endian) or in typed `contents` (grpcurl's and KServe's examples: `bytes_contents`,
`fp32_contents`); mixing both is an error. Outputs go in `raw_output_contents` when the request came raw
(tritonclient reads only those), typed contents otherwise (as MLServer decides).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from rnnserve.service.core.errors import BadRequest, InvalidInput, echo
from rnnserve.service.http.tensors import encode_bytes


def v2_header(request) -> tuple[dict, bytes, bool]:
    """(header, binary, raw): the request as the HTTP data plane reads it, and whether it came raw."""
    raw = len(request.raw_input_contents) > 0
    if raw and any(tensor.HasField("contents") for tensor in request.inputs):
        raise InvalidInput("a request carries its inputs in raw_input_contents or in contents, not both")
    if raw and len(request.raw_input_contents) != len(request.inputs):
        raise InvalidInput(f"{len(request.raw_input_contents)} raw_input_contents for {len(request.inputs)} inputs")
    inputs, binary = [], b""
    for i, tensor in enumerate(request.inputs):
        entry = {"name": tensor.name, "datatype": tensor.datatype, "shape": list(tensor.shape)}
        if raw:
            binary = request.raw_input_contents[i]
            entry["parameters"] = {"binary_data_size": len(binary)}
        elif tensor.datatype == "BYTES":
            try:
                entry["data"] = [b.decode("utf-8") for b in tensor.contents.bytes_contents]
            except UnicodeDecodeError:
                raise BadRequest("input texts must be UTF-8") from None
        elif tensor.datatype == "FP32":
            entry["data"] = list(tensor.contents.fp32_contents)
        else:
            raise InvalidInput(f"input {echo(tensor.name)} has datatype {echo(tensor.datatype)}; this server takes "
                               "BYTES and FP32")
        inputs.append(entry)
    header: dict[str, Any] = {"inputs": inputs}
    if request.parameters:
        header["parameters"] = {key: getattr(value, value.WhichOneof("parameter_choice"))
                                for key, value in request.parameters.items() if value.WhichOneof("parameter_choice")}
    if request.outputs:
        header["outputs"] = [{"name": out.name} for out in request.outputs]
    return header, binary, raw


def requested(request, names: list[str]) -> list[tuple[str, object]]:
    """(name, classification k or None) of the outputs the request names (all, when it names none)."""
    if not request.outputs:
        return [(name, None) for name in names]
    wanted = []
    for out in request.outputs:
        if out.name not in names:
            raise InvalidInput(f"unknown output {echo(out.name)}; outputs are {' and '.join(map(repr, names))}")
        k = out.parameters["classification"] if "classification" in out.parameters else None
        wanted.append((out.name, None if k is None else getattr(k, k.WhichOneof("parameter_choice") or "int64_param")))
    return wanted


def fill_outputs(response, tensors: dict, names: list[str], raw: bool) -> None:
    """The codec's output tensors (FP32 arrays or lists of strings) into the response, raw or typed."""
    for name in names:
        value = tensors[name]
        out = response.outputs.add()
        out.name = name
        if isinstance(value, np.ndarray):
            out.datatype, out.shape[:] = "FP32", list(value.shape)
            if raw:
                response.raw_output_contents.append(value.astype("<f4").tobytes())
            else:
                out.contents.fp32_contents.extend(value.ravel().tolist())
        else:  # strings [N], or the classification extension's [N, k]
            rows = value and isinstance(value[0], list)
            flat = [s for row in value for s in row] if rows else value
            out.datatype, out.shape[:] = "BYTES", [len(value), len(value[0])] if rows else [len(value)]
            if raw:
                response.raw_output_contents.append(encode_bytes(flat))
            else:
                out.contents.bytes_contents.extend(s.encode("utf-8") for s in flat)
