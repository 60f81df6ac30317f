"""open_model: the runtime for a package's task (every caller that opens packages by path goes through it)."""

from __future__ import annotations

from pathlib import Path

from rnnserve.service.core.package import PackageError, read_package
from rnnserve.service.runtime.base import ModelRuntime, RuntimeObserver, RuntimeOptions
from rnnserve.service.runtime.generator import TextGenerator
from rnnserve.service.runtime.sequence import SequenceModel
from rnnserve.service.runtime.text import TextClassifier

RUNTIMES: dict[str, type[ModelRuntime]] = {task: cls for cls in (TextClassifier, SequenceModel, TextGenerator)
                                           for task in cls.tasks}


def open_model(path: str | Path, options: RuntimeOptions = RuntimeOptions(),
               observer: RuntimeObserver | None = None) -> ModelRuntime:
    package = read_package(path)
    if package.task not in RUNTIMES:
        raise PackageError(f"no runtime for task {package.task!r}")
    return RUNTIMES[package.task].start(package, options, observer)
