"""ModelInferRequest/Response <-> the data plane's types (service/v2/types.py).

Inputs come in `raw_input_contents` (what tritonclient sends: BYTES serialised, FP32 little-endian) or in typed
`contents` (grpcurl's and KServe's examples: `bytes_contents`, `fp32_contents`); mixing both is an error. Every
input's shape is checked before its data is decoded. Outputs go in `raw_output_contents` when the request came
raw (tritonclient reads only those), typed contents otherwise (as MLServer decides).
"""

from __future__ import annotations

import numpy as np

from rnnserve.service.core.errors import InvalidInput
from rnnserve.service.grpc import messages
from rnnserve.service.v2 import tensors
from rnnserve.service.v2.types import InferRequest, InferResponse, Parameters, RequestedOutput, Tensor

ModelInferResponse = messages.message("ModelInferResponse")


def parameters(params) -> Parameters:
    """A protobuf map<string, InferParameter> as plain values (a parameter with no value set is left out)."""
    out: Parameters = {}
    for key, value in params.items():
        choice = value.WhichOneof("parameter_choice")
        if choice is not None:
            out[key] = getattr(value, choice)
    return out


def infer_request(request, max_rows: int) -> tuple[InferRequest, bool]:
    """(the request, whether its inputs came raw)."""
    raw = len(request.raw_input_contents) > 0
    if raw and any(tensor.HasField("contents") for tensor in request.inputs):
        raise InvalidInput("a request carries its inputs in raw_input_contents or in contents, not both")
    if raw and len(request.raw_input_contents) != len(request.inputs):
        raise InvalidInput(f"{len(request.raw_input_contents)} raw_input_contents for {len(request.inputs)} inputs")
    inputs = []
    for i, tensor in enumerate(request.inputs):
        shape = tensors.declared_shape(tensor.name, tensor.datatype, list(tensor.shape), max_rows)
        data: np.ndarray | list[str]
        if raw:
            chunk = request.raw_input_contents[i]
            data = tensors.decode_bytes(chunk, shape) if tensor.datatype == "BYTES" else tensors.decode_fp32(chunk,
                                                                                                             shape)
        elif tensor.datatype == "BYTES":
            items = list(tensor.contents.bytes_contents)
            if len(items) != tensors.element_count(shape):
                raise InvalidInput(f"shape {shape} says {tensors.element_count(shape)} elements but {len(items)} "
                                   "were sent")
            data = tensors.texts(items)
        else:
            data = tensors.fp32_array(list(tensor.contents.fp32_contents), shape)
        inputs.append(Tensor(tensor.name, tensor.datatype, shape, data))
    outputs = [RequestedOutput(out.name, parameters(out.parameters)) for out in request.outputs]
    return InferRequest(request.model_name, request.model_version or None, inputs, outputs,
                        parameters(request.parameters), request.id or None), raw


def infer_response(response: InferResponse, raw: bool):
    """The answer as a ModelInferResponse, raw or typed."""
    message = ModelInferResponse(model_name=response.model_name, model_version=response.model_version,
                                 id=response.id or "")
    for tensor in response.outputs:
        out = message.outputs.add()
        out.name, out.datatype = tensor.name, tensor.datatype
        out.shape[:] = tensor.shape
        if raw:
            message.raw_output_contents.append(tensors.raw_bytes(tensor.data))
        elif isinstance(tensor.data, np.ndarray):
            out.contents.fp32_contents.extend(tensor.data.ravel().tolist())
        else:
            out.contents.bytes_contents.extend(s.encode("utf-8") for s in tensor.data)
    return message

