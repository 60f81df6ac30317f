"""The ASGI app factory every worker runs: the HTTP app, and beside it in the same event loop the gRPC server
(GRPC_PORT; 0: none) with its own handlers on the app's state, and `grpc.health.v1.Health` for Kubernetes'
gRPC probes (SERVING once the models are loaded). grpcio sets SO_REUSEPORT on Linux, so the workers share
the port; a client's HTTP/2 connection stays on one worker.
"""

from __future__ import annotations

from contextlib import asynccontextmanager

import grpc
from fastapi import FastAPI

from rnnserve.service.grpc import messages
from rnnserve.service.grpc.service import InferenceService
from rnnserve.service.http.app import create_app as create_http_app
from rnnserve.service.settings import Settings


def health_handler(registry) -> grpc.GenericRpcHandler:
    """grpc.health.v1.Health/Check: SERVING once every model has loaded (the HTTP readiness), NOT_SERVING
    before; for the whole server ("") and for the inference service's name alike, SERVICE_UNKNOWN otherwise."""
    status = messages.HealthCheckResponse.ServingStatus

    async def check(request, context):
        if request.service not in ("", messages.SERVICE):
            return messages.HealthCheckResponse(status=status.Value("SERVICE_UNKNOWN"))
        return messages.HealthCheckResponse(status=status.Value("SERVING" if registry.ready else "NOT_SERVING"))

    ((request_type, response_type, _),) = messages.methods(messages.HEALTH).values()
    return grpc.method_handlers_generic_handler(messages.HEALTH, {"Check": grpc.unary_unary_rpc_method_handler(
        check, request_type.FromString, response_type.SerializeToString)})


async def start_grpc(state, settings: Settings) -> grpc.aio.Server:
    """Bind and start the gRPC server on settings.host:grpc_port; a message may be as large as a request body
    (grpcio's default is 4 MiB)."""
    limit = settings.max_body_bytes
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", limit),
                                      ("grpc.max_send_message_length", max(limit, 64 << 20)),
                                      ("grpc.so_reuseport", 1)])
    server.add_generic_rpc_handlers((InferenceService(state).handlers(), health_handler(state.registry)))
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    if not server.add_insecure_port(f"{host}:{settings.grpc_port}"):
        raise RuntimeError(f"cannot bind the gRPC port {host}:{settings.grpc_port}")
    await server.start()
    return server


def create_app(settings: Settings | None = None, wait_for_models: bool = False) -> FastAPI:
    """The HTTP app (http/app.py) with the gRPC server started and stopped in its lifespan: stopped first at
    shutdown, calls in flight given SHUTDOWN_GRACE_S, before the models close."""
    app = create_http_app(settings, wait_for_models)
    settings = app.state.settings
    if not settings.grpc_port:
        return app
    http_lifespan = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        async with http_lifespan(app) as state:
            server = await start_grpc(app.state, settings)
            try:
                yield state
            finally:
                await server.stop(settings.shutdown_grace_s)

    app.router.lifespan_context = lifespan
    return app
