"""The app factory every worker runs (uvicorn and Granian call it, so does Ray Serve): one ServerState and one
V2 data plane, served over HTTP (the FastAPI app it returns) and, beside it in the same event loop, over gRPC
(GRPC_PORT; 0: none). Its lifespan loads the models in the background, starts gRPC and payload logging's sender,
and at shutdown stops gRPC first (calls in flight given SHUTDOWN_GRACE_S), then the models, then sends what
payload logging and tracing still hold."""

from __future__ import annotations

import asyncio
import contextlib
from contextlib import asynccontextmanager

from fastapi import FastAPI

from rnnserve.service import logs
from rnnserve.service.grpc.server import GrpcServer
from rnnserve.service.http.app import create_http_app
from rnnserve.service.observe.payload import PayloadLogger
from rnnserve.service.observe.tracing import Tracing
from rnnserve.service.settings import Settings
from rnnserve.service.state import ServerState
from rnnserve.service.v2.dataplane import DataPlane


def create_app(settings: Settings | None = None, wait_for_models: bool = False) -> FastAPI:
    """settings None: a worker process's, from the environment (RNNSERVE_*). wait_for_models: startup ends only
    once the models are loaded (for hosts that route traffic to an app as soon as it has started, such as Ray
    Serve); by default they load in the background."""
    if settings is None:
        settings = Settings()
        logs.configure(settings.log_level, settings.log_json)
    state = ServerState.build(settings)
    payload = PayloadLogger(settings, state.metrics) if settings.payload_log else None
    tracing = Tracing.configure(settings)
    observers = [o for o in (state.drift if settings.drift else None, payload) if o is not None]
    dataplane = DataPlane(state, observers)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        loading = state.start()
        if payload is not None:
            payload.start()
        grpc_server = GrpcServer(settings, dataplane, tracing) if settings.grpc_port else None
        serving = None
        try:
            if grpc_server is not None:
                await grpc_server.start()
                serving = asyncio.create_task(grpc_server.ready(loading))
            if wait_for_models:
                await loading
            yield
        finally:
            if serving is not None:
                serving.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await serving
            if grpc_server is not None:
                await grpc_server.stop()
            await dataplane.shadow.close()
            await state.close()
            for close in (payload.close if payload else None, tracing.close if tracing else None):
                if close is not None:
                    await asyncio.to_thread(close)

    return create_http_app(state, dataplane, lifespan, tracing)
