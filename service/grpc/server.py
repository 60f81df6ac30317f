"""The gRPC server of one worker, in the same event loop as its HTTP app: the V2 protocol
(inference.GRPCInferenceService, grpc/service.py), `grpc.health.v1.Health` from grpcio-health-checking (Check and
Watch, SERVING once the models are loaded, NOT_SERVING from shutdown on), and server reflection when
GRPC_REFLECTION is on.

GRPC_SERVER picks the server under the same handlers: grpcio's (the default), or pygrpc-native's (the
[grpc-native] extra), whose HTTP/2 and gRPC framing run in Rust outside the GIL: measured twice grpcio's
requests per second at 16 and 64 clients here (docs/benchmarks.md), but without the connection cap, the idle and
the handshake deadlines below, which it cannot do; bidirectional streams go to a grpcio server behind it.

grpcio sets SO_REUSEPORT, so the workers share the port and the kernel spreads connections over them; a
client's HTTP/2 connection stays on one worker. The server's limits (grpcio's channel arguments): messages as
large as MAX_BODY_BYTES; at most the worker's share of MAX_GRPC_CONNECTIONS connections (more are refused
before their handshake); a handshake within HEADER_TIMEOUT_S; a connection idle past GRPC_IDLE_S closed with
GOAWAY; 128 calls at once on one connection.
"""

from __future__ import annotations

import asyncio
import socket

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from rnnserve.service.grpc import messages
from rnnserve.service.grpc.service import InferenceServicer
from rnnserve.service.observe.tracing import Tracing
from rnnserve.service.settings import Settings
from rnnserve.service.v2.dataplane import DataPlane

MAX_STREAMS = 128  # calls at once on one connection (HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS)
# What pygrpc-native cannot do (it refuses these options): cap connections, close idle ones, bound the handshake.
NOT_NATIVE = ("grpc.max_allowed_incoming_connections", "grpc.max_connection_idle_ms",
              "grpc.server_handshake_timeout_ms")


def options(settings: Settings) -> list[tuple[str, int]]:
    limit = settings.max_body_bytes
    return [("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", max(limit, 64 << 20)),
            ("grpc.so_reuseport", 1),
            ("grpc.max_allowed_incoming_connections", settings.per_worker(settings.max_grpc_connections)),
            ("grpc.server_handshake_timeout_ms", round(settings.header_timeout_s * 1000)),
            ("grpc.max_connection_idle_ms", round(settings.grpc_idle_s * 1000)),
            ("grpc.max_concurrent_streams", MAX_STREAMS)]


class GrpcServer:
    """start() binds and serves; ready() once the models are loaded; stop() at shutdown (NOT_SERVING first,
    then calls in flight get SHUTDOWN_GRACE_S)."""

    def __init__(self, settings: Settings, dataplane: DataPlane, tracing: Tracing | None = None):
        self.settings = settings
        if settings.grpc_server == "native":
            import pygrpc_native.aio  # the [grpc-native] extra (checked at start by the entry point)

            self.server = pygrpc_native.aio.server(options=[o for o in options(settings) if o[0] not in NOT_NATIVE])
        else:
            self.server = grpc.aio.server(options=options(settings))
        # Registered, not generic: pygrpc-native serves registered unary methods itself (generic ones go to its
        # grpcio fallback); grpcio serves both alike.
        self.server.add_registered_method_handlers(messages.SERVICE, InferenceServicer(dataplane, tracing).handlers())
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        if settings.grpc_reflection:
            names = (messages.SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME)
            reflection.enable_server_reflection(names, self.server, pool=messages.POOL)

    async def start(self) -> None:
        for service in ("", messages.SERVICE):
            await self.health.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)
        host = f"[{self.settings.host}]" if ":" in self.settings.host else self.settings.host
        if not self.server.add_insecure_port(f"{host}:{self.settings.grpc_port}"):
            raise RuntimeError(f"cannot bind the gRPC port {host}:{self.settings.grpc_port}")
        await self.server.start()

    async def ready(self, loading: asyncio.Task) -> None:
        """SERVING for the whole server and the inference service once `loading` is done (readiness)."""
        await asyncio.shield(loading)
        for service in ("", messages.SERVICE):
            await self.health.set(service, health_pb2.HealthCheckResponse.SERVING)

    async def stop(self) -> None:
        await self.health.enter_graceful_shutdown()
        await self.server.stop(self.settings.shutdown_grace_s)


def port_taken(host: str, port: int) -> bool:
    """Whether another process listens on host:port. The server's own workers share the port (SO_REUSEPORT);
    this bind without it fails when anything listens there, so a second server is refused at start instead of
    taking a share of the first one's connections."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a connection in TIME_WAIT is no listener
        try:
            probe.bind((host, port))
        except OSError:
            return True
    return False
