"""What every transport checks and decodes the same way: a tensor's declared shape and element count (checked
before any element is decoded), Triton's BYTES serialisation (a 4-byte little-endian length, then the bytes;
HTTP's binary tensor extension and gRPC's raw contents both use it), UTF-8 texts and little-endian FP32."""

from __future__ import annotations

import math
import struct

import numpy as np

from rnnserve.service.core.errors import BadRequest, InvalidInput, PayloadTooLarge, echo

DATATYPES = ("BYTES", "FP32")  # what this server's models take and give
MAX_DIMS = 8  # no model here takes more than 3; a shape of thousands of axes is no shape


def declared_shape(name: object, datatype: object, shape: object, max_rows: int) -> list[int]:
    """A tensor's declared shape: a list of non-negative integers with at most max_rows rows (PayloadTooLarge,
    before anything is decoded: counting is cheap, decoding millions of elements is not). InvalidInput for a
    datatype this server does not take or a shape that is no shape."""
    if datatype not in DATATYPES:
        raise InvalidInput(f"input {echo(name)} has datatype {echo(datatype)}; this server takes BYTES and FP32")
    if not (isinstance(shape, list | tuple) and 0 < len(shape) <= MAX_DIMS
            and all(type(d) is int and d >= 0 for d in shape)):
        raise InvalidInput(f"input {echo(name)} has shape {echo(shape)}: a shape is a list of 1 to {MAX_DIMS} "
                           "integers >= 0")
    if shape[0] > max_rows:
        raise PayloadTooLarge(f"{shape[0]} rows in one request; the limit is {max_rows}")
    return list(shape)


def element_count(shape: list[int]) -> int:
    return math.prod(shape)


def decode_bytes(buf: bytes, shape: list[int]) -> list[str]:
    """A BYTES tensor's serialisation -> its elements as UTF-8 texts; exactly as many as the shape says
    (InvalidInput), whole (BadRequest for a truncated element or text that is not UTF-8)."""
    expected = element_count(shape)
    out: list[bytes] = []
    i = 0
    while i < len(buf):
        if len(out) == expected:
            raise InvalidInput(f"shape {shape} says {expected} elements but the BYTES data holds more")
        if i + 4 > len(buf):
            raise BadRequest("truncated BYTES tensor")
        (n,) = struct.unpack_from("<I", buf, i)
        i += 4
        if i + n > len(buf):
            raise BadRequest("truncated BYTES tensor")
        out.append(buf[i:i + n])
        i += n
    if len(out) != expected:
        raise InvalidInput(f"shape {shape} says {expected} elements but {len(out)} were sent")
    return texts(out)


def texts(items: list[bytes]) -> list[str]:
    try:
        return [b.decode("utf-8") for b in items]
    except UnicodeDecodeError:
        raise BadRequest("input texts must be UTF-8") from None


def encode_bytes(items: list[str]) -> bytes:
    """Texts -> Triton's BYTES serialisation."""
    parts = []
    for s in items:
        b = s.encode("utf-8")
        parts.append(struct.pack("<I", len(b)) + b)
    return b"".join(parts)


def decode_fp32(buf: bytes, shape: list[int]) -> np.ndarray:
    """Little-endian FP32, row-major -> float32 array of the shape (InvalidInput unless the size fits)."""
    count = element_count(shape)
    if len(buf) != count * 4:
        raise InvalidInput(f"shape {shape} needs {count * 4} bytes of FP32, got {len(buf)}")
    return np.frombuffer(buf, dtype="<f4").reshape(shape)


def fp32_array(values: list, shape: list[int]) -> np.ndarray:
    """Flat numbers -> float32 array of the shape (InvalidInput unless the count fits). Values beyond float32
    become infinity, which the model's own checks refuse."""
    count = element_count(shape)
    if len(values) != count:
        raise InvalidInput(f"shape {shape} says {count} numbers but {len(values)} were sent")
    with np.errstate(over="ignore"):
        return np.array(values, dtype=np.float32).reshape(shape)


def raw_bytes(tensor_data: np.ndarray | list[str]) -> bytes:
    """A tensor's data in its binary form: BYTES serialised, FP32 little-endian."""
    if isinstance(tensor_data, np.ndarray):
        return tensor_data.astype("<f4", copy=False).tobytes()
    return encode_bytes(tensor_data)
