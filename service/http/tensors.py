"""The V2 protocol's tensors on the wire (JSON `data` or the binary tensor extension), read and written for
the codecs: BYTES as Triton serialises them (4-byte little-endian length, then the bytes), FP32 flat in
row-major order or nested exactly as the declared shape. Every count is checked against the declared shape
before any element is decoded."""

from __future__ import annotations

import struct

import numpy as np

from rnnserve.service.core.errors import BadRequest, InvalidInput, PayloadTooLarge, echo

TEXT_NAME, SEQUENCES_NAME = "text", "sequences"


def one_input(header: dict, name: str, datatype: str) -> dict:
    inputs = header.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise InvalidInput(f"expected exactly one input tensor named {name!r}")
    tensor = inputs[0]
    if tensor.get("name") != name:
        raise InvalidInput(f"unexpected input {echo(tensor.get('name'))}; this model takes {name!r}")
    if tensor.get("datatype") != datatype:
        raise InvalidInput(f"input {name!r} must have datatype {datatype}, not {echo(tensor.get('datatype'))}")
    return tensor


def binary_size(tensor: dict, binary: bytes) -> int | None:
    params = tensor.get("parameters") or {}
    size = params.get("binary_data_size") if isinstance(params, dict) else None
    if size is not None and (not isinstance(size, int) or size != len(binary)):
        raise BadRequest(f"binary_data_size {echo(size)} does not match the {len(binary)} binary bytes sent")
    return size


def read_texts(header: dict, binary: bytes, max_texts: int) -> list[str]:
    tensor = one_input(header, TEXT_NAME, "BYTES")
    shape = tensor.get("shape")
    if (not isinstance(shape, list) or not shape or not all(isinstance(d, int) and d >= 0 for d in shape)
            or any(d != 1 for d in shape[1:])):
        raise InvalidInput(f"input shape must be [N] or [N, 1], got {echo(shape)}")
    if shape[0] > max_texts:  # before decoding anything: counting is cheap, decoding millions of elements is not
        raise PayloadTooLarge(f"{shape[0]} texts in one request; the limit is {max_texts}")
    if binary_size(tensor, binary) is not None:
        raw = decode_bytes(binary, shape[0])
        try:
            texts = [b.decode("utf-8") for b in raw]
        except UnicodeDecodeError:
            raise BadRequest("input texts must be UTF-8") from None
    else:
        data = tensor.get("data")
        if not isinstance(data, list):
            raise InvalidInput(f"input {TEXT_NAME!r} needs 'data' (or binary data)")
        texts = flatten(data)
        if not all(isinstance(t, str) for t in texts):
            raise InvalidInput("every element of a BYTES input must be a string")
    if len(texts) != shape[0]:
        raise InvalidInput(f"shape {shape} says {shape[0]} texts but {len(texts)} were sent")
    if not texts:
        raise InvalidInput("no texts to classify")
    return texts


def read_sequences(header: dict, binary: bytes, shape: tuple[int, int], max_rows: int,
                   up_to_steps: bool = False) -> np.ndarray:
    """One FP32 tensor `sequences` [N, T, F]: JSON data (flat, row-major, or nested) or binary little-endian.
    up_to_steps: T may be 1..shape[0] (a sequence's step)."""
    tensor = one_input(header, SEQUENCES_NAME, "FP32")
    declared = tensor.get("shape")
    steps = shape[0]
    if (up_to_steps and isinstance(declared, list) and len(declared) == 3 and type(declared[1]) is int
            and 1 <= declared[1] <= shape[0]):
        steps = declared[1]
    if not (isinstance(declared, list) and len(declared) == 3 and all(type(d) is int for d in declared)
            and declared[0] >= 1 and tuple(declared[1:]) == (steps, shape[1])):
        expected = f"1..{shape[0]}" if up_to_steps else shape[0]
        raise InvalidInput(f"input shape must be [N, {expected}, {shape[1]}] with N >= 1, got {echo(declared)}")
    if declared[0] > max_rows:  # before decoding anything
        raise PayloadTooLarge(f"{declared[0]} sequences in one request; the limit is {max_rows}")
    count = declared[0] * steps * shape[1]
    size = binary_size(tensor, binary)
    if size is not None:
        if size != count * 4:
            raise InvalidInput(f"shape {declared} needs {count * 4} bytes of FP32, got {size}")
        return np.frombuffer(binary, dtype="<f4").reshape(declared)
    data = tensor.get("data")
    if not isinstance(data, list):
        raise InvalidInput(f"input {SEQUENCES_NAME!r} needs 'data' (or binary data)")
    return np.array(numbers(data, declared), dtype=np.float32).reshape(declared)


def numbers(data: list, shape: list[int]) -> list:
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


def flatten(data: list) -> list:
    """[N] data, or [N, 1] sent nested; anything deeper stays a list and is refused as a non-string."""
    out = []
    for x in data:
        out.extend(x if isinstance(x, list) else [x])
    return out


def decode_bytes(buf: bytes, expected: int) -> list[bytes]:
    """Triton's BYTES serialisation: each element is a little-endian uint32 length, then the bytes. Stops
    at the first element beyond the `expected` count the shape declared."""
    out: list[bytes] = []
    i = 0
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


def encode_bytes(items: list[str]) -> bytes:
    parts = []
    for s in items:
        b = s.encode("utf-8")
        parts.append(struct.pack("<I", len(b)) + b)
    return b"".join(parts)
