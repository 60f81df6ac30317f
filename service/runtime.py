"""The runtimes: one object runs one model package. ModelRuntime holds what they share (package, onnxruntime
session, warm-up, describe, close); TextClassifier (tokenizer, batcher) runs text classifiers here,
SequenceModel (service/sequence_model.py) numeric-sequence models and TextGenerator (service/generator.py)
character language models. `open_model` (service/loader.py) picks one by the package's task.

The HTTP server, `rnnserve-score` and every engine open packages through them, so they all give the same
answers. Servers call `await predict(texts)`: requests queue their raw texts, and the batcher's worker
thread tokenizes the whole batch (compiled tokenizer, GIL released) and runs onnxruntime, off the event
loop. Offline code calls `predict_batch(texts)` synchronously.

    with TextClassifier.open("models/imdb-lstm/1") as clf:
        result = clf.predict_batch(["a moving film", "dull and far too long"])
        clf.labels[result.probs.argmax(1)[0]]
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from service import explain
from service.batcher import Batcher, BatchObserver
from service.errors import Overloaded, PayloadTooLarge
from service.package import Package, PackageError, check_io, read_package
from service.session import OnnxModel
from service.tokenizer import TokenStats, Tokenizer


@dataclass(frozen=True)
class RuntimeOptions:
    """How to run a package; a package's metadata "serving" section may override the batch settings."""

    provider: str = "auto"  # auto | cpu | cuda
    intra_op_threads: int = 0  # 0: the CPUs this process may use
    max_batch_size: int = 64
    max_batch_delay_ms: float = 0.0
    max_queue: int = 2048
    warmup: bool = True


@dataclass
class Classified:
    """Class probabilities [N, C] and what the tokenizer did, for N texts in order."""

    probs: np.ndarray
    stats: list[TokenStats]

    def __len__(self) -> int:
        return len(self.stats)

    def __getitem__(self, rows: slice) -> "Classified":
        return Classified(self.probs[rows], self.stats[rows])

    @staticmethod
    def concat(parts: list["Classified"]) -> "Classified":
        return Classified(np.concatenate([p.probs for p in parts]), [s for p in parts for s in p.stats])


@dataclass(frozen=True)
class Occluded:
    """One variant of an explanation: a text's unpadded ids with some positions left out. A row of a
    TextClassifier batch like a text; its ids are built in the run that takes it."""

    ids: np.ndarray  # int64 [L], shared by all the variants of one text
    drop: tuple[int, ...]  # positions left out

    def encode(self) -> list[int]:
        return np.delete(self.ids, self.drop).tolist()


@dataclass
class Explanation:
    """The text's own prediction, the label explained (its index), and every word with its contribution."""

    prediction: Classified
    label: int
    words: list[explain.Word]
    method: str
    window: int
    runs: int  # texts run: the text and each variant


class ModelRuntime:
    """One package and its onnxruntime session; subclasses add the task's input handling and batching."""

    tasks: tuple[str, ...] = ()  # the package tasks this runtime runs

    def __init__(self, package: Package, session: OnnxModel, options: RuntimeOptions = RuntimeOptions(),
                 observer: BatchObserver | None = None):
        self.package, self.session = package, session
        serving = package.metadata.get("serving", {})
        self.batcher = Batcher(self.run_batch,
                               max_batch_size=int(serving.get("max_batch_size", options.max_batch_size)),
                               max_delay_s=float(serving.get("max_batch_delay_ms", options.max_batch_delay_ms)) / 1000,
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
        session = OnnxModel(path / "model.onnx", options.provider, options.intra_op_threads,
                            package.metadata["input"]["name"], package.metadata["output"]["name"])
        check_io(package, session.inputs(), session.outputs())
        runtime = cls(package, session, options, observer)
        try:
            runtime.check(options.warmup)
        except BaseException:
            runtime.batcher.shutdown()
            raise
        return runtime

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
            "state": "ready",
            "task": self.task,
            "labels": self.labels,
            "architecture": meta.get("architecture", {}),
            "maxlen": self.package.maxlen,
            "dataset": meta.get("dataset", {}),
            "metrics": meta.get("metrics", {}),
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


class TextClassifier(ModelRuntime):
    """Runs a text classifier: raw texts [N] -> class probabilities [N, C] (float32) and TokenStats, through
    the batcher (`predict`, `explain`) or here and now (`predict_batch`)."""

    tasks = ("text-classification",)

    def __init__(self, package: Package, session: OnnxModel, options: RuntimeOptions = RuntimeOptions(),
                 observer: BatchObserver | None = None):
        self.tokenizer = Tokenizer(package.tokenizer)
        self.explaining = 0  # explanations running now
        super().__init__(package, session, options, observer)

    def check(self, warm_up: bool) -> None:
        if warm_up:
            self.session.warm_up(np.ones((1, self.package.maxlen), dtype=np.int64))
        try:
            self.session.run(np.full((1, self.package.maxlen), self.tokenizer.max_id, dtype=np.int64))
        except Exception as exc:  # noqa: BLE001 - onnxruntime's own error says which node refused
            raise PackageError(f"the model does not take the tokenizer's ids up to {self.tokenizer.max_id} (an "
                               f"embedding smaller than the vocabulary?): {str(exc)[:300]}") from None

    @property
    def dynamic_length(self) -> bool:
        """Masked models ignore padding: pad to the longest text, not to maxlen (short texts cost little)."""
        return bool(self.package.metadata.get("dynamic_length", False))

    def run_batch(self, rows: list[str | Occluded]) -> Classified:
        """Tokenize and classify texts (and explanations' variants) in one onnxruntime run (the batcher's
        worker thread calls this)."""
        if all(type(row) is str for row in rows):
            ids, stats = self.tokenizer(rows, dynamic=self.dynamic_length)
        else:
            ids, stats = self._mixed_ids(rows)
        return Classified(self.session.run(ids), stats)

    def _mixed_ids(self, rows: list[str | Occluded]) -> tuple[np.ndarray, list[TokenStats]]:
        maxlen = self.package.maxlen
        seqs, stats = [], []
        for row in rows:
            seq, oov = (row.encode(), 0) if isinstance(row, Occluded) else self.tokenizer.encode(row)
            seqs.append(seq)
            stats.append(TokenStats(tokens=min(len(seq), maxlen), oov=oov, truncated=len(seq) > maxlen))
        return self.tokenizer.pad(seqs, dynamic=self.dynamic_length), stats

    def _chunks(self, texts: list[str]) -> tuple[list[list[str]], np.ndarray | None]:
        """Texts in runs of at most max_batch_size. For masked models, sorted by length first (undone by the
        returned order), so each run pads to texts of like length instead of the longest of all."""
        step = self.batcher.max_batch_size
        order = None
        if self.dynamic_length and len(texts) > step:
            order = np.argsort([len(t) for t in texts], kind="stable")
            texts = [texts[i] for i in order]
        return [texts[i:i + step] for i in range(0, len(texts), step)], order

    @staticmethod
    def _join(parts: list[Classified], order: np.ndarray | None) -> Classified:
        out = parts[0] if len(parts) == 1 else Classified.concat(parts)
        if order is None:
            return out
        back = np.empty_like(order)
        back[order] = np.arange(len(order))
        return Classified(out.probs[back], [out.stats[i] for i in back])

    async def predict(self, texts: list[str]) -> Classified:
        """Classify texts through the batcher, coalesced with concurrent callers. Raises Overloaded when full."""
        chunks, order = self._chunks(texts)
        if len(chunks) == 1:
            return await self.batcher.submit(chunks[0])
        return self._join(await asyncio.gather(*(self.batcher.submit(c) for c in chunks)), order)

    async def explain(self, text: str, label: int | None = None, method: str = "occlusion", window: int = 5,
                      max_words: int | None = None, max_explanations: int | None = None) -> Explanation:
        """Each word's contribution to one label's probability (the predicted label by default), by occlusion
        (service/explain.py). The words are read off the event loop; the text and its variants then go
        through the batcher one run of max_batch_size at a time, in the background: /predict requests go
        before an explanation's next run. Each run's ids are built in the run. Raises PayloadTooLarge past max_words
        (counted before any word is read) and Overloaded with max_explanations already running."""
        if max_explanations is not None and self.explaining >= max_explanations:
            raise Overloaded(f"model {self.name!r} is running {self.explaining} explanations, its limit; "
                             "retry later")
        self.explaining += 1  # no await since the check: concurrent requests cannot both pass it
        try:
            words, ids = await asyncio.to_thread(self._read_words, text, max_words)
            groups = explain.occlusion_groups(words, method, window)
            ids = np.array(ids, np.int64)
            rows = [text, *(Occluded(ids, drop) for drop in explain.left_out(words, groups))]
            step = self.batcher.max_batch_size
            result = Classified.concat([await self.batcher.submit(rows[i:i + step], background=True)
                                        for i in range(0, len(rows), step)])
        finally:
            self.explaining -= 1
        probs = result.probs
        if label is None:
            label = int(probs[0].argmax())
        explain.attribute(words, groups, float(probs[0, label]), probs[1:, label].tolist())
        return Explanation(result[:1], label, words, method, window if method == "window" else 1, len(result))

    def _read_words(self, text: str, max_words: int | None) -> tuple[list[explain.Word], list[int]]:
        if max_words is not None and (n := self.tokenizer.count_words(text)) > max_words:
            raise PayloadTooLarge(f"the text has {n} words; at most {max_words} can be explained")
        return explain.read_words(self.tokenizer, text)

    def predict_batch(self, texts: list[str]) -> Classified:
        """Classify texts here and now, in runs of max_batch_size (offline use: no event loop needed)."""
        chunks, order = self._chunks(texts)
        return self._join([self.run_batch(c) for c in chunks], order)

    def describe(self) -> dict:
        return super().describe() | {
            "padding": self.package.tokenizer.padding,
            "truncating": self.package.tokenizer.truncating,
            "vocab_size": self.package.tokenizer.vocab_size,
            "tokenizer": self.tokenizer.implementation,
        }
