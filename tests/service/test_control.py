"""Model control through the workers' shared state directory (service/control.py), driven directly: a change is
known by the generation inside desired.json, never by the file's time and size, and a control directory that
cannot be written answers 503 and leaves the server serving, saying why in readiness."""

import asyncio
import json
import os
import shutil

import pytest

from rnnserve.service.control import ModelControl
from rnnserve.service.core.errors import NotFound, StorageUnavailable
from rnnserve.service.metrics import Metrics
from rnnserve.service.registry import Registry
from rnnserve.service.settings import Settings
from tests.service.storage import full_directory

NAME = "sentiment-lstm"


@pytest.fixture()
def repo(tmp_path, model_repo):
    shutil.copytree(model_repo / NAME, tmp_path / "models" / NAME)
    return tmp_path / "models"


async def wait_for(condition, timeout: float = 10) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "the worker did not apply the change"
        await asyncio.sleep(0.01)


def test_a_publish_of_the_same_size_and_time_is_applied(repo, tmp_path):
    """Two publishes in one tick of a coarse clock look alike to (mtime, size): "unload at generation 9" and
    "load at generation 10", padded to the same size and given the first one's mtime, must both be applied."""
    state = tmp_path / "state"
    state.mkdir()

    async def main():
        registry = Registry(Settings(models_dir=repo, warmup=False), Metrics())
        control = ModelControl(registry, state)
        await control.start()
        try:
            desired = state / "desired.json"
            unload = json.dumps({"generation": 9, "models": {NAME: {"op": "unload", "generation": 9}}})
            load = json.dumps({"generation": 10, "models": {NAME: {"op": "load", "generation": 10}}})
            unload = unload.ljust(len(load))
            assert len(unload) == len(load)
            desired.write_text(unload)
            await wait_for(lambda: not registry.versions(NAME))
            stat = desired.stat()
            desired.write_text(load)
            os.utime(desired, ns=(stat.st_atime_ns, stat.st_mtime_ns))
            assert (desired.stat().st_mtime_ns, desired.stat().st_size) == (stat.st_mtime_ns, stat.st_size)
            await wait_for(lambda: bool(registry.versions(NAME)))
        finally:
            await control.close()
            await registry.close()

    asyncio.run(main())


def test_a_control_directory_that_cannot_be_written_answers_503_and_keeps_serving(repo, tmp_path):
    with full_directory(tmp_path / "state") as state:

        async def main():
            registry = Registry(Settings(models_dir=repo, warmup=False), Metrics())
            control = ModelControl(registry, state.path)
            await control.start()  # its status written while there is room
            try:
                state.fill()
                with pytest.raises(StorageUnavailable, match="control state could not be written"):
                    await control.unload(NAME)
                assert registry.versions(NAME)  # nothing changed: the model serves
                with pytest.raises(NotFound):
                    await control.unload("nope")
                control._write_status()  # a worker's own status, as after applying a change
                assert control.problem and "could not be written" in control.problem
                state.free()
                control._write_status()
                assert control.problem is None
                assert not [p for p in state.path.rglob("*") if p.name.endswith(".tmp")]
            finally:
                await control.close()
                await registry.close()

        asyncio.run(main())
