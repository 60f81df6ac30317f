"""The one tokenizer: raw text -> Keras-style token ids, padded to the model's length.

Training, the export parity gate and the service all use this module, built from the spec saved in
the model package, so the ids a model sees in production are the ids it was trained on. It needs
only numpy. The rules reproduce `keras.preprocessing.text.Tokenizer` defaults and the
`keras.datasets` id conventions (start_char, oov_char, index_from, num_words, skip_top).
"""

from __future__ import annotations

import json
import string
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Literal

import numpy as np

# keras.preprocessing.text.Tokenizer's default `filters`.
KERAS_FILTERS = '!"#$%&()*+,-./:;<=>?@[\\]^_`{|}~\t\n'
SPEC_FORMAT = "keras-word-index/1"


@dataclass(frozen=True)
class TokenStats:
    """What happened to one text on its way to the model."""

    tokens: int  # ids kept after padding/truncation, start_char included, padding excluded
    oov: int  # words mapped to oov_char (rare words) or dropped (unknown words)
    truncated: bool


@dataclass
class TokenizerSpec:
    """Everything needed to turn text into the exact ids a model was trained on (saved as JSON)."""

    words: list[str]  # words[i] has rank i + 1 in the word index (most frequent first)
    lower: bool = True
    filters: str = KERAS_FILTERS
    split: str = " "
    # Python 2 byte strings lowered ASCII only; Keras's published datasets were built that way.
    lower_ascii_only: bool = True
    # Reuters' word index stores each non-ASCII character as "?"; None keeps them.
    non_ascii_replacement: str | None = None
    # "drop": words absent from the index vanish (how Keras built the IMDB test split);
    # "oov": they become oov_char (better for user data whose index is the training split's).
    unknown_words: Literal["drop", "oov"] = "drop"
    start_char: int | None = 1
    oov_char: int | None = 2
    index_from: int = 3
    num_words: int | None = None  # ids >= num_words become oov_char, as keras.datasets does
    skip_top: int = 0
    maxlen: int = 200
    padding: Literal["pre", "post"] = "pre"
    truncating: Literal["pre", "post"] = "pre"
    format: str = field(default=SPEC_FORMAT)

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False)

    @classmethod
    def from_dict(cls, data: dict) -> "TokenizerSpec":
        if data.get("format") != SPEC_FORMAT:
            raise ValueError(f"unsupported tokenizer format {data.get('format')!r}, expected {SPEC_FORMAT!r}")
        known = set(cls.__dataclass_fields__)
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown tokenizer spec fields: {sorted(unknown)}")
        spec = cls(**data)
        spec.validate()
        return spec

    @classmethod
    def load(cls, path: str | Path) -> "TokenizerSpec":
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json(), encoding="utf-8")

    def validate(self) -> None:
        if self.maxlen < 1:
            raise ValueError("maxlen must be >= 1")
        if self.padding not in ("pre", "post") or self.truncating not in ("pre", "post"):
            raise ValueError("padding and truncating must be 'pre' or 'post'")
        if self.unknown_words not in ("drop", "oov"):
            raise ValueError("unknown_words must be 'drop' or 'oov'")
        if self.unknown_words == "oov" and self.oov_char is None:
            raise ValueError("unknown_words='oov' needs an oov_char")
        if not isinstance(self.words, list) or not all(isinstance(w, str) for w in self.words):
            raise ValueError("words must be a list of strings")

    @property
    def vocab_size(self) -> int:
        """Size of the id space the embedding must cover."""
        if self.num_words:
            return self.num_words
        return len(self.words) + self.index_from


def word_index_to_words(word_index: dict[str, int]) -> list[str]:
    """Keras's {word: rank} (ranks 1..n, no gaps) as a rank-ordered list."""
    words = [""] * len(word_index)
    for word, rank in word_index.items():
        if not 1 <= rank <= len(words) or words[rank - 1]:
            raise ValueError(f"word index is not a permutation of 1..{len(words)} (word {word!r}, rank {rank})")
        words[rank - 1] = word
    return words


class Tokenizer:
    """Applies a TokenizerSpec. Thread-safe: it holds no mutable state after construction."""

    def __init__(self, spec: TokenizerSpec):
        spec.validate()
        self.spec = spec
        table = {ord(c): spec.split for c in spec.filters}
        if spec.lower:
            if spec.lower_ascii_only:
                table.update({ord(c): c.lower() for c in string.ascii_uppercase})
        self._table = table
        self._full_lower = spec.lower and not spec.lower_ascii_only
        # word -> final id (after index_from, num_words and skip_top), computed once.
        self._ids = {word: self._final_id(rank + spec.index_from) for rank, word in enumerate(spec.words, start=1)}

    def _final_id(self, i: int) -> int:
        s = self.spec
        if (s.num_words and i >= s.num_words) or i < s.skip_top:
            return s.oov_char if s.oov_char is not None else -1  # -1: keras drops it (oov_char=None)
        return i

    def split_words(self, text: str) -> list[str]:
        """Keras's text_to_word_sequence, with the spec's lower-casing and non-ASCII rules."""
        if self._full_lower:
            text = text.lower()
        words = [w for w in text.translate(self._table).split(self.spec.split) if w]
        repl = self.spec.non_ascii_replacement
        if repl is not None:
            words = [w if w.isascii() else "".join(c if c.isascii() else repl for c in w) for w in words]
        return words

    def encode(self, text: str) -> tuple[list[int], int]:
        """Text -> unpadded id list (start_char first) and the count of OOV or dropped words."""
        s = self.spec
        # keras.datasets applies the num_words/skip_top rule to start_char as well.
        ids = [] if s.start_char is None else [self._final_id(s.start_char)]
        oov = 0
        unknown = s.oov_char if s.unknown_words == "oov" else None
        get = self._ids.get
        for word in self.split_words(text):
            i = get(word, unknown)
            if i is None or i == -1:
                oov += 1
                continue
            if i == s.oov_char:
                oov += 1
            ids.append(i)
        return ids, oov

    def pad(self, sequences: list[list[int]], maxlen: int | None = None, dynamic: bool = False) -> np.ndarray:
        """keras pad_sequences with the spec's sides, into an int64 matrix (pad value 0).

        dynamic: pad only to the longest sequence (capped at maxlen), for models that ignore padding."""
        maxlen = maxlen or self.spec.maxlen
        if dynamic:
            maxlen = max(1, min(maxlen, max((len(s) for s in sequences), default=1)))
        out = np.zeros((len(sequences), maxlen), dtype=np.int64)
        pre_trunc = self.spec.truncating == "pre"
        pre_pad = self.spec.padding == "pre"
        for row, seq in enumerate(sequences):
            if not seq:
                continue
            seq = seq[-maxlen:] if pre_trunc else seq[:maxlen]
            if pre_pad:
                out[row, maxlen - len(seq):] = seq
            else:
                out[row, : len(seq)] = seq
        return out

    def __call__(self, texts: Iterable[str], maxlen: int | None = None,
                 dynamic: bool = False) -> tuple[np.ndarray, list[TokenStats]]:
        """Texts -> (padded id matrix, per-text stats)."""
        maxlen = maxlen or self.spec.maxlen
        seqs, stats = [], []
        for text in texts:
            ids, oov = self.encode(text)
            seqs.append(ids)
            stats.append(TokenStats(tokens=min(len(ids), maxlen), oov=oov, truncated=len(ids) > maxlen))
        return self.pad(seqs, maxlen, dynamic), stats


def build_vocabulary(texts: Iterable[str], spec_template: TokenizerSpec) -> list[str]:
    """Rank words by count on training texts, ties by first appearance (as Keras's Tokenizer.fit_on_texts)."""
    splitter = Tokenizer(TokenizerSpec(**{**asdict(spec_template), "words": []}))
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(splitter.split_words(text))
    # Counter keeps insertion order and sorted() is stable, so equal counts stay in first-seen order.
    return [w for w, _ in sorted(counts.items(), key=lambda kv: -kv[1])]
