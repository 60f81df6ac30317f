"""The protocol's message classes, built from the descriptor set of inference.proto (protocol.binpb, `make
proto`) in a descriptor pool of their own: generated `_pb2` modules register `inference.*` in protobuf's default
pool, where tritonclient.grpc's own classes live too, and one process holding both fails with "duplicate symbol"
(MLServer #1730, KServe #3099). The health service is grpcio-health-checking's (grpc.health.v1)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

SERVICE = "inference.GRPCInferenceService"
_FILES = descriptor_pb2.FileDescriptorSet.FromString((Path(__file__).parent / "protocol.binpb").read_bytes())
POOL = descriptor_pool.DescriptorPool()
for _file in _FILES.file:
    POOL.Add(_file)


def message(name: str) -> type:
    """The class of `inference.NAME` in the private pool."""
    return message_factory.GetMessageClass(POOL.FindMessageTypeByName(f"inference.{name}"))


def methods() -> dict[str, tuple[Any, Any, bool]]:
    """Each RPC of the service: (request class, response class, streaming: both ways, or unary)."""
    descriptor = POOL.FindServiceByName(SERVICE)
    return {m.name: (message_factory.GetMessageClass(m.input_type), message_factory.GetMessageClass(m.output_type),
                     m.server_streaming) for m in descriptor.methods}
