"""TextClassifier: runs a text classifier package. Servers call `await predict(texts)`: requests queue their
raw texts, and the batcher's worker thread tokenizes the whole batch (compiled tokenizer, GIL released) and
runs onnxruntime, off the event loop. Offline code calls `predict_batch(texts)` synchronously.

    with TextClassifier.open("models/imdb-lstm/1") as clf:
        result = clf.predict_batch(["a moving film", "dull and far too long"])
        clf.labels[result.probabilities.argmax(1)[0]]
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import cast

import numpy as np

from rnnserve.service.core.errors import Overloaded, PayloadTooLarge, ServiceError
from rnnserve.service.core.package import Package, PackageError, Task
from rnnserve.service.core.tokenizer import Tokenizer, TokenStats
from rnnserve.service.runtime import explain
from rnnserve.service.runtime.base import ModelRuntime, RuntimeObserver, RuntimeOptions
from rnnserve.service.runtime.explain import Word
from rnnserve.service.runtime.session import OrtSession


@dataclass
class ClassificationResult:
    """What a text classifier gives N texts, in order: float32 class probabilities [N, C] and what the
    tokenizer did with each text."""

    probabilities: np.ndarray
    token_stats: list[TokenStats]

    def __len__(self) -> int:
        return len(self.token_stats)

    def __getitem__(self, rows: slice) -> ClassificationResult:
        return ClassificationResult(self.probabilities[rows], self.token_stats[rows])

    @staticmethod
    def concat(parts: list[ClassificationResult]) -> ClassificationResult:
        return ClassificationResult(np.concatenate([p.probabilities for p in parts]),
                                    [s for p in parts for s in p.token_stats])


Classify = Callable[[list[str]], Awaitable[ClassificationResult]]


async def classify_each(classify: Classify, texts: list[str], labels: int) -> tuple[np.ndarray, list[str | None]]:
    """"A bad input fails alone", for whole files (the scorer, Ray Data): classify texts [N] -> float32
    probabilities [N, C] (NaN rows where a text failed) and, per text, None or why it failed. A failed run is
    retried text by text, so only the texts that fail alone get an error; a ServiceError (the model gone,
    closing or overloaded) is every text's answer at once, without retries. The batcher isolates requests
    the same way, one level up."""
    if not texts:
        return np.zeros((0, labels), np.float32), []
    try:
        return (await classify(texts)).probabilities, [None] * len(texts)
    except ServiceError as exc:
        return np.full((len(texts), labels), np.nan, np.float32), [str(exc)] * len(texts)
    except Exception as exc:  # noqa: BLE001 - narrowed down below, text by text
        if len(texts) == 1:
            return np.full((1, labels), np.nan, np.float32), [str(exc)]
    probabilities = np.full((len(texts), labels), np.nan, np.float32)
    errors: list[str | None] = [None] * len(texts)
    for i, text in enumerate(texts):
        try:
            probabilities[i] = (await classify([text])).probabilities[0]
        except Exception as exc:  # noqa: BLE001 - this text's own failure, reported in its row
            errors[i] = str(exc)
    return probabilities, errors


@dataclass(frozen=True)
class Occluded:
    """One variant of an explanation: a text's unpadded ids with some positions left out. A row of a
    TextClassifier batch like a text; its ids are built in the run that takes it."""

    ids: np.ndarray  # int64 [L], shared by all the variants of one text
    drop: tuple[int, ...]  # positions left out

    def encode(self) -> list[int]:
        return np.delete(self.ids, self.drop).tolist()


@dataclass(frozen=True, slots=True)
class Tokenized:
    """A text already tokenized (a large request's, before it queued): its unpadded ids and OOV count. A row of
    a TextClassifier batch like a text; its length is its ids' (masked models sort runs by it)."""

    ids: list[int]
    oov: int

    def __len__(self) -> int:
        return len(self.ids)


# A request of this many texts is tokenized in a thread of its own before it queues, so that while the batcher's
# thread runs the model on one request the next is being tokenized (file scoring's blocks, large batches); a
# smaller one is tokenized in the run, saving the hop to a thread.
PRETOKENIZE_ROWS = 64


@dataclass
class Explanation:
    """The text's own prediction, the label explained (its index), and every word with its contribution."""

    prediction: ClassificationResult
    label: int
    words: list[explain.Word]
    method: str
    window: int
    runs: int  # texts run: the text and each variant


class TextClassifier(ModelRuntime):
    """Runs a text classifier: raw texts [N] -> class probabilities [N, C] (float32) and TokenStats, through
    the batcher (`predict`, `explain`) or here and now (`predict_batch`)."""

    tasks = (Task.TEXT_CLASSIFICATION,)

    def __init__(self, package: Package, session: OrtSession, options: RuntimeOptions = RuntimeOptions(),
                 observer: RuntimeObserver | None = None):
        assert package.tokenizer is not None  # read_package requires one for text tasks
        self.tokenizer = Tokenizer(package.tokenizer)
        self.explaining = 0  # explanations running now
        super().__init__(package, session, options, observer)

    def check(self, warm_up: bool) -> None:
        if warm_up:
            self.session.warm_up(np.ones((1, self.package.maxlen), dtype=np.int64), self.warm_up_sizes)
        try:
            self.session.run(np.full((1, self.package.maxlen), self.tokenizer.max_id, dtype=np.int64))
        except Exception as exc:  # noqa: BLE001 - onnxruntime's own error says which node refused
            raise PackageError(f"the model does not take the tokenizer's ids up to {self.tokenizer.max_id} (an "
                               f"embedding smaller than the vocabulary?): {str(exc)[:300]}") from None

    @property
    def dynamic_length(self) -> bool:
        """Masked models ignore padding: pad to the longest text, not to maxlen (short texts cost little)."""
        return self.package.metadata.dynamic_length

    async def _predict(self, rows: Sequence | np.ndarray) -> ClassificationResult:
        if len(rows) >= PRETOKENIZE_ROWS:
            rows = await asyncio.to_thread(self.pretokenize, rows)
        return await super()._predict(rows)

    def pretokenize(self, texts: Sequence[str] | np.ndarray) -> list[Tokenized]:
        """Texts -> their unpadded ids and OOV counts (what run_batch would compute), for a run to pad."""
        return [Tokenized(*self.tokenizer.encode(text)) for text in texts]

    def run_batch(self, rows: list[str | Occluded | Tokenized]) -> ClassificationResult:
        """Tokenize and classify texts (and explanations' variants) in one onnxruntime run (the batcher's
        worker thread calls this)."""
        if all(type(row) is str for row in rows):
            ids, stats = self.tokenizer(cast(list[str], rows), dynamic=self.dynamic_length)
        else:
            ids, stats = self._mixed_ids(rows)
        return ClassificationResult(self.session.run(ids), stats)

    def _mixed_ids(self, rows: list[str | Occluded | Tokenized]) -> tuple[np.ndarray, list[TokenStats]]:
        maxlen = self.package.maxlen
        seqs, stats = [], []
        for row in rows:
            if isinstance(row, Tokenized):
                seq, oov = row.ids, row.oov
            else:
                seq, oov = (row.encode(), 0) if isinstance(row, Occluded) else self.tokenizer.encode(row)
            seqs.append(seq)
            stats.append(TokenStats(kept=min(len(seq), maxlen), oov=oov, truncated=len(seq) > maxlen, length=len(seq),
                                    words=self.tokenizer.words_of(seq, oov)))
        return self.tokenizer.pad(seqs, dynamic=self.dynamic_length), stats

    def order(self, texts: Sequence | np.ndarray) -> np.ndarray | None:
        """Masked models run texts sorted by length, so each run pads to texts of like length instead of the
        longest of all."""
        return np.argsort([len(t) for t in texts], kind="stable") if self.dynamic_length else None

    def concat(self, parts: list[ClassificationResult]) -> ClassificationResult:
        return ClassificationResult.concat(parts)

    def take(self, result: ClassificationResult, rows: np.ndarray) -> ClassificationResult:
        return ClassificationResult(result.probabilities[rows], [result.token_stats[i] for i in rows])

    async def explain(self, text: str, label: int | None = None, method: str = "occlusion", window: int = 5,
                      max_words: int | None = None, max_explanations: int | None = None) -> Explanation:
        """Each word's contribution to one label's probability (the predicted label by default), by occlusion
        (service/runtime/explain.py). The words are read off the event loop; the text and its variants then go
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
            text_ids = np.array(ids, np.int64)
            rows = [text, *(Occluded(text_ids, drop) for drop in explain.left_out(words, groups))]
            step = self.batcher.max_batch_size
            result = ClassificationResult.concat([await self.batcher.submit(rows[i:i + step], background=True)
                                        for i in range(0, len(rows), step)])
        finally:
            self.explaining -= 1
        probs = result.probabilities
        if label is None:
            label = int(probs[0].argmax())
        explain.attribute(words, groups, float(probs[0, label]), probs[1:, label].tolist())
        return Explanation(result[:1], label, words, method, window if method == "window" else 1, len(result))

    def _read_words(self, text: str, max_words: int | None) -> tuple[list[Word], list[int]]:
        if max_words is not None and (n := self.tokenizer.count_words(text)) > max_words:
            raise PayloadTooLarge(f"the text has {n} words; at most {max_words} can be explained")
        return explain.read_words(self.tokenizer, text)
