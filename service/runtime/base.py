"""The runtime contract: one object runs one model package. ModelRuntime holds what every task's runtime
shares (package, onnxruntime session, batcher, warm-up, describe, close); TextClassifier (text.py) runs text
classifiers, SequenceModel (sequence.py) numeric-sequence models and TextGenerator (generator.py) character
language models. `open_model` (loader.py) picks one by the package's task.

The HTTP server, `rnnserve-score` and every engine open packages through them, so they all give the same
answers.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rnnserve.service.core.package import Package, PackageError, check_io, read_package
from rnnserve.service.runtime.batcher import Batcher, BatchObserver
from rnnserve.service.runtime.session import OrtSession


@dataclass(frozen=True)
class RuntimeOptions:
    """How to run a package; a package's metadata "serving" section may override the batch settings."""

    provider: str = "auto"  # auto | cpu | cuda
    intra_op_threads: int = 0  # 0: the CPUs this process may use
    max_batch_size: int = 64
    max_batch_delay_ms: float = 0.0
    max_queue: int = 2048
    warmup: bool = True


class ModelRuntime:
    """One package and its onnxruntime session; subclasses add the task's input handling and batching."""

    tasks: tuple[str, ...] = ()  # the package tasks this runtime runs

    def __init__(self, package: Package, session: OrtSession, options: RuntimeOptions = RuntimeOptions(),
                 observer: BatchObserver | None = None):
        self.package, self.session = package, session
        serving = package.metadata.serving
        delay_ms = options.max_batch_delay_ms if serving.max_batch_delay_ms is None else serving.max_batch_delay_ms
        self.batcher = Batcher(self.run_batch, max_batch_size=serving.max_batch_size or options.max_batch_size,
                               max_delay_s=delay_ms / 1000,
                               max_queue=options.max_queue, observer=observer, name=f"{self.name}/{self.version}")

    @classmethod
    def open(cls, path: str | Path, options: RuntimeOptions = RuntimeOptions(),
             observer: BatchObserver | None = None):
        """Validate the package, start its session, check it and warm it up. Raises PackageError with the
        reason."""
        return cls.start(read_package(Path(path)), options, observer)

    @classmethod
    def start(cls, package: Package, options: RuntimeOptions = RuntimeOptions(),
              observer: BatchObserver | None = None):
        """open() for a package already read and validated."""
        path = package.path
        if package.task not in cls.tasks:
            raise PackageError(f"{package.name} is a {package.task} package; {cls.__name__} runs "
                               f"{' and '.join(cls.tasks)} packages")
        session = OrtSession(path / "model.onnx", options.provider, options.intra_op_threads,
                            package.metadata.input.name, package.metadata.output.name)
        check_io(package, session.inputs(), session.outputs())
        runtime = cls(package, session, options, observer)
        try:
            runtime.check(options.warmup)
        except BaseException:
            runtime.batcher.shutdown()
            raise
        return runtime

    @property
    def warm_up_sizes(self) -> tuple[int, ...]:
        """Batch sizes a warm-up runs: one request, and the largest batch this runtime forms."""
        return (1, self.batcher.max_batch_size)

    def check(self, warm_up: bool) -> None:
        """Run the model once on inputs at the edge of what it will get (and warm it up)."""

    def run_batch(self, rows: list):
        raise NotImplementedError

    @property
    def name(self) -> str:
        return self.package.name

    @property
    def version(self) -> int:
        return self.package.version

    @property
    def labels(self) -> list[str]:
        return self.package.labels

    @property
    def task(self) -> str:
        return self.package.task

    def describe(self) -> dict:
        meta = self.package.metadata
        return {
            "name": self.name,
            "version": self.version,
            "task": self.task,
            "labels": self.labels,
            "architecture": meta.architecture,
            "maxlen": self.package.maxlen,
            "dataset": meta.dataset,
            "metrics": meta.metrics,
            "provider": self.session.provider,
            "threads": self.session.threads,
            "max_batch_size": self.batcher.max_batch_size,
            "plots": self.package.plots,
        }

    async def close(self, grace_s: float = 0.0) -> None:
        """Let queued batches finish (up to grace_s), fail what is left, stop the worker thread."""
        await self.batcher.close(grace_s)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.batcher.shutdown()
