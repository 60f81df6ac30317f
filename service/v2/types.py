"""The V2 protocol's requests and answers inside the server: neither JSON nor protobuf. A tensor's data is
already decoded: BYTES as a flat list of str, FP32 as a float32 array of the tensor's shape."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

Parameter = bool | int | float | str
Parameters = dict[str, Parameter]
Data = np.ndarray | list[str]


@dataclass(slots=True)
class Tensor:
    """A named tensor: datatype "BYTES" (data: its elements, flat, row-major) or "FP32" (data: float32
    array shaped `shape`)."""

    name: str
    datatype: str
    shape: list[int]
    data: Data


@dataclass(slots=True)
class RequestedOutput:
    """An output the client asks for, with its parameters (`classification`: the k most probable classes;
    HTTP's `binary_data` is read by the HTTP adapter)."""

    name: str
    parameters: Parameters = field(default_factory=dict)


@dataclass(slots=True)
class InferRequest:
    """outputs empty: every output the model gives. parameters: the request's, e.g. the sequence extension's
    sequence_id, sequence_start, sequence_end."""

    model_name: str
    model_version: str | None
    inputs: list[Tensor]
    outputs: list[RequestedOutput] = field(default_factory=list)
    parameters: Parameters = field(default_factory=dict)
    id: str | None = None


@dataclass(slots=True)
class InferResponse:
    model_name: str
    model_version: str
    outputs: list[Tensor]
    id: str | None = None
