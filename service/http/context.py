"""The worker's ServerState and V2 data plane as a handler reaches them: typed, from the app they were built
into (http/app.py)."""

from __future__ import annotations

from starlette.requests import Request

from rnnserve.service.state import ServerState
from rnnserve.service.v2.dataplane import DataPlane


def server(request: Request) -> ServerState:
    return request.app.state.server


def dataplane(request: Request) -> DataPlane:
    return request.app.state.dataplane
