"""Dependencies shared by the routers (FastAPI-template style Annotated aliases).

They are `async def` on purpose: FastAPI runs plain `def` dependencies in a worker thread, a thread
hand-off per request on the hot path."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from service.registry import Registry
from service.settings import Settings


async def get_registry(request: Request) -> Registry:
    return request.app.state.registry


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


RegistryDep = Annotated[Registry, Depends(get_registry)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
