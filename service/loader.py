"""open_model: the runtime for a package's task (every caller that opens packages by path goes through it)."""

from __future__ import annotations

from pathlib import Path

from service.batcher import BatchObserver
from service.generator import TextGenerator
from service.package import PackageError, read_package
from service.runtime import ModelRuntime, RuntimeOptions, TextClassifier
from service.sequence_model import SequenceModel

RUNTIMES: dict[str, type[ModelRuntime]] = {task: cls for cls in (TextClassifier, SequenceModel, TextGenerator)
                                           for task in cls.tasks}


def open_model(path: str | Path, options: RuntimeOptions = RuntimeOptions(),
               observer: BatchObserver | None = None) -> ModelRuntime:
    task = read_package(path).task  # validated again by open(); cheap next to starting a session
    if task not in RUNTIMES:
        raise PackageError(f"no runtime for task {task!r}")
    return RUNTIMES[task].open(path, options, observer)
