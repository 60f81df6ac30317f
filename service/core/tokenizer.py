"""The one tokenizer: raw text -> Keras-style token ids, padded to the model's length.

Training, the export parity gate, imports and the service all use this module, built from the spec saved in
the model package, so the ids a model sees in production are the ids it was trained on. It needs
only numpy. One set of rules expresses the three Keras pipelines (training/preprocessing.py maps each):
`keras.preprocessing.text.Tokenizer` (filters replaced by the split string, Python's lower-casing), the
`keras.datasets` id conventions (start_char, oov_char, index_from, num_words, skip_top; ASCII lower-casing)
and the `TextVectorization` layer (ASCII lower-casing, punctuation deleted, ASCII whitespace runs split,
vocabulary after the mask and OOV ids, padded and truncated at the end); and the PyTorch notebooks' own
(training/onnx_import.py): a {token: id} vocabulary (`ids`), tokens found by a regular expression with Python
`re`'s semantics (`token_pattern`), any padding id (`pad_id`), start and end ids around each text.
"""

from __future__ import annotations

import hashlib
import json
import re
import string
import weakref
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from rnnserve.service.core.normalize import Origin, check_rules, normalizer

try:
    from rnnserve.service.core import _fasttok  # type: ignore[attr-defined]  # the C extension, when built
except ImportError:  # no compiler at install time: the reference serves alone
    _fasttok = None

# keras.preprocessing.text.Tokenizer's default `filters`.
KERAS_FILTERS = '!"#$%&()*+,-./:;<=>?@[\\]^_`{|}~\t\n'
DELETE = 0x80  # the compiled tokenizer's table value for a deleted ASCII character
SPEC_FORMAT = "keras-word-index/1"


@dataclass(frozen=True)
class TokenStats:
    """What happened to one text on its way to the model."""

    kept: int  # ids kept after padding/truncation, start_char included, padding excluded
    oov: int  # words mapped to oov_char (rare words) or dropped (unknown words)
    truncated: bool
    length: int = 0  # ids before truncation, start_char and end_char included
    words: int = 0  # the text's words (tokens), found or not: the OOV share is oov / words


class _Words(list):
    __slots__ = ("__weakref__",)  # a list that a WeakValueDictionary can hold


_VOCABULARIES: weakref.WeakValueDictionary[bytes, _Words] = weakref.WeakValueDictionary()


def shared_words(words: list[str]) -> list[str]:
    """One list (and one str object per word) for every spec of this process with the same words: the bundled
    IMDB packages share one 88,584-word vocabulary and differ in num_words and maxlen, and each kept its own
    copy (6 MB a package, per worker)."""
    digest = hashlib.sha256("\0".join(words).encode("utf-8", "surrogatepass")).digest()
    shared = _VOCABULARIES.get(digest)
    if shared is None or shared != words:
        shared = _VOCABULARIES[digest] = _Words(words)
    return shared


@dataclass
class TokenizerSpec:
    """Everything needed to turn text into the exact ids a model was trained on (saved as JSON)."""

    words: list[str]  # words[i] has rank i + 1 in the word index (most frequent first), or id ids[i]
    # Keras's char_level=True: every character is a token (after lower-casing and strip); filters and split
    # do not apply
    char_level: bool = False
    lower: bool = True
    filters: str = KERAS_FILTERS  # each becomes `split` (Keras's Tokenizer)
    split: str = " "
    strip: str = ""  # characters deleted (TextVectorization's strip_punctuation: ASCII punctuation)
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
    # Named rules applied before everything else (service/core/normalize.py), in this order: typographic
    # quotes, dashes, Unicode forms and spaces as a keyboard writes them. [] (Keras's rules alone) for packages
    # whose training ids came from a Keras dataset; new packages trained on raw text get normalize.DEFAULT.
    normalization: list[str] = field(default_factory=list)
    # A {token: id} vocabulary (PyTorch notebooks): words[i] has id ids[i]; ranks, index_from (0), num_words
    # and skip_top do not apply. None: ids are ranks + index_from, as Keras numbers them.
    ids: list[int] | None = None
    # Tokens are re.findall(token_pattern, text) on the text after lower-casing, filters and strip, with Python
    # re's semantics (no capturing groups); None: the text split at `split`.
    token_pattern: str | None = None
    # Lower-case each character alone (Rust's char::to_lowercase, as Hugging Face's Lowercase does): Python's
    # str.lower() also applies the final-sigma rule ("ΟΔΟΣ" -> "οδος"; per character "οδοσ"). Needs
    # lower and not lower_ascii_only.
    lower_per_character: bool = False
    # Characters whose lower-case form is given here, not Python's (with lower_per_character: a library on a newer
    # Unicode than this Python's, e.g. Hugging Face tokenizers' Lowercase).
    lower_overrides: dict[str, str] = field(default_factory=dict)
    # Literal strings taken out of the raw text first, before every other rule, each one token (Hugging Face's
    # added tokens: "[CLS]", "[PAD]"); the longest at the leftmost place wins. They are words. No normalization.
    special_tokens: list[str] = field(default_factory=list)
    end_char: int | None = None  # an id after each text's ids (before padding and truncation, as start_char)
    pad_id: int = 0  # the id padding fills with
    format: str = field(default=SPEC_FORMAT)

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False)

    @classmethod
    def from_dict(cls, data: dict) -> TokenizerSpec:
        if data.get("format") != SPEC_FORMAT:
            raise ValueError(f"unsupported tokenizer format {data.get('format')!r}, expected {SPEC_FORMAT!r}")
        known = set(cls.__dataclass_fields__)
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown tokenizer spec fields: {sorted(unknown)}")
        spec = cls(**(data | {"words": shared_words(data.get("words", []))}))
        spec.validate()
        return spec

    @classmethod
    def load(cls, path: str | Path) -> TokenizerSpec:
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8-sig")))

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
        if not self.split:
            raise ValueError("split must not be empty")
        if set(self.strip) & (set(self.filters) | set(self.split)):
            raise ValueError("strip and filters/split share characters")
        check_rules(self.normalization)
        if self.ids is not None:
            if len(self.ids) != len(self.words) or not all(type(i) is int and i >= 0 for i in self.ids):
                raise ValueError("ids must give each word an id >= 0")
            if self.index_from or self.num_words or self.skip_top:
                raise ValueError("a vocabulary with ids takes no index_from, num_words or skip_top")
        if self.token_pattern is not None:
            if self.char_level:
                raise ValueError("token_pattern and char_level exclude each other")
            try:
                groups = re.compile(self.token_pattern).groups
            except re.error as exc:
                raise ValueError(f"token_pattern {self.token_pattern!r} is not a regular expression: {exc}") from None
            if groups:
                raise ValueError(f"token_pattern {self.token_pattern!r} has capturing groups: re.findall would give "
                                 "the groups, not the tokens; use (?:...)")
        if self.lower_per_character and (not self.lower or self.lower_ascii_only):
            raise ValueError("lower_per_character needs lower and not lower_ascii_only")
        if self.lower_overrides and (not self.lower_per_character
                                     or not all(len(k) == 1 for k in self.lower_overrides)):
            raise ValueError("lower_overrides map single characters, with lower_per_character")
        if self.special_tokens and (not set(self.special_tokens) <= set(self.words) or "" in self.special_tokens
                                    or self.char_level or self.normalization):
            raise ValueError("special_tokens must be non-empty words, without char_level or normalization")
        if any(i is not None and (type(i) is not int or i < 0) for i in (self.end_char, self.pad_id)):
            raise ValueError("end_char and pad_id must be ids >= 0")

    @property
    def vocab_size(self) -> int:
        """Size of the id space the embedding must cover."""
        if self.num_words:
            return self.num_words
        if self.ids is not None:
            return max(self.ids, default=-1) + 1
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
    """Applies a TokenizerSpec. Thread-safe: it holds no mutable state after construction.

    The Python code here is the reference (`word_spans`, `_encode_spans`, `pad`). Where the spec fits
    the compiled tokenizer (service/core/_fasttok.c: ASCII filters and split character, ASCII-only or no
    lower-casing) and it is built, `encode`, `encode_spans` and whole batches go through it instead, the GIL
    released; it gives the same ids, proven on both full raw training sets and by property-based tests.
    `implementation` says which one a tokenizer uses; `fast=False` forces the reference."""

    def __init__(self, spec: TokenizerSpec, fast: bool = True):
        spec.validate()
        self.spec = spec
        self._normalize = normalizer(spec.normalization)
        table: dict[int, str | None] = {} if spec.char_level else {ord(c): spec.split for c in spec.filters}
        table.update({ord(c): None for c in spec.strip})
        if spec.lower:
            if spec.lower_ascii_only:
                table.update({ord(c): c.lower() for c in string.ascii_uppercase})
        self._table = table
        self._full_lower = spec.lower and not spec.lower_ascii_only
        self._pattern = re.compile(spec.token_pattern) if spec.token_pattern is not None else None
        self._specials = (re.compile("|".join(map(re.escape, sorted(spec.special_tokens, key=len, reverse=True))))
                          if spec.special_tokens else None)  # longest first: the leftmost-longest match
        # Translation deletes characters (strip) and widens others (filters -> a longer split): the length
        # alone cannot tell whether positions moved.
        self._remap = bool(spec.strip) and not spec.char_level and bool(spec.filters) and len(spec.split) > 1
        # word -> final id (after index_from, num_words and skip_top), computed once.
        self._ids = ({word: self._final_id(rank + spec.index_from) for rank, word in enumerate(spec.words, start=1)}
                     if spec.ids is None else dict(zip(spec.words, spec.ids)))
        self._start = None if spec.start_char is None else self._final_id(spec.start_char)
        self._end = None if spec.end_char is None else self._final_id(spec.end_char)
        # The highest id this tokenizer can emit: the model's embedding must cover it.
        self.max_id = max([*self._ids.values(), spec.oov_char or 0, spec.pad_id, self._start or 0, self._end or 0])
        self._fast = self._compile() if fast else None
        self.implementation = "c" if self._fast is not None else "python"

    def _compile(self):
        """The compiled tokenizer for this spec, or None where it cannot express the spec exactly. Where the spec
        treats non-ASCII characters specially (Python's full lower-casing, non-ASCII filters or strip), it takes
        ASCII texts only and leaves the others to the reference."""
        s = self.spec
        if (_fasttok is None or s.char_level or len(s.split) != 1 or not s.split.isascii()
                or self._pattern is not None or s.special_tokens  # regular expressions are Python re's alone
                or any(c.isascii() for c in s.lower_overrides)):
            return None
        table = bytearray(range(128))
        for code in range(128):
            c = chr(code).lower() if self._full_lower else chr(code)  # str.lower() on ASCII is ASCII's
            to = self._table.get(ord(c), c)
            if to is None:
                table[code] = DELETE
            elif len(to) != 1 or not to.isascii():
                return None
            else:
                table[code] = ord(to)
        ascii_only = self._full_lower or any(code > 127 for code in self._table)
        try:
            return _fasttok.Tokenizer(self._ids, bytes(table), ord(s.split), s.non_ascii_replacement, self._start,
                                      s.oov_char, s.oov_char if s.unknown_words == "oov" else None, ascii_only,
                                      self._end)
        except ValueError:  # ids beyond int32, or a vocabulary over 4 GB
            return None

    def _final_id(self, i: int) -> int:
        s = self.spec
        if (s.num_words and i >= s.num_words) or i < s.skip_top:
            return s.oov_char if s.oov_char is not None else -1  # -1: keras drops it (oov_char=None)
        return i

    def word_spans(self, text: str) -> list[tuple[str, int, int]]:
        """Keras's text_to_word_sequence (or, char_level, its characters) after the spec's normalization, with
        its lower-casing and non-ASCII rules: each word as the model sees it, with its character span
        [start, end) in the original text."""
        text, origin = self._normalized(text)
        return _back(self._word_spans(text), origin)

    def _normalized(self, text: str) -> tuple[str, Origin]:
        return (text, None) if self._normalize is None else self._normalize(text)

    def _lowered(self, text: str) -> str:
        if not self._full_lower:
            return text
        if not self.spec.lower_per_character:
            return text.lower()
        overrides = self.spec.lower_overrides
        return "".join([overrides.get(c) or c.lower() for c in text] if overrides else [c.lower() for c in text])

    def _word_spans(self, text: str) -> list[tuple[str, int, int]]:
        if self._specials is None:
            return self._plain_spans(text)
        words, pos = [], 0
        for match in self._specials.finditer(text):
            words += [(w, a + pos, b + pos) for w, a, b in self._plain_spans(text[pos:match.start()])]
            words.append((match.group(), match.start(), match.end()))
            pos = match.end()
        return words + [(w, a + pos, b + pos) for w, a, b in self._plain_spans(text[pos:])]

    def _plain_spans(self, text: str) -> list[tuple[str, int, int]]:
        """The words of a text without special tokens."""
        lowered = self._lowered(text)
        translated = lowered.translate(self._table)
        if self.spec.char_level:
            words = [(c, i, i + 1) for i, c in enumerate(translated)]
        elif self._pattern is not None:
            words = [(m.group(), m.start(), m.end()) for m in self._pattern.finditer(translated)]
        else:
            sep = self.spec.split
            words, pos = [], 0
            for piece in translated.split(sep):
                if piece:
                    words.append((piece, pos, pos + len(piece)))
                pos += len(piece) + len(sep)
        lengthened = len(lowered) != len(text)  # full lower-casing: "İ" -> "i̇"
        if lengthened or self._remap or len(translated) != len(lowered):
            # Where each translated character came from: a deleted one (strip) gives none, a filter several
            # (a split string longer than one character).
            cased = [i for i, c in enumerate(text) for _ in self._lowered(c)] if lengthened else range(len(text))
            get = self._table.get
            origin = [i for i, c in zip(cased, lowered) for _ in get(ord(c), c) or ""]

            def place(k: int) -> int:  # an empty token (a pattern may match "") has a place, no characters
                return origin[k] if k < len(origin) else len(text)

            words = [(w, place(a), origin[b - 1] + 1 if b > a else place(a)) for w, a, b in words]
        repl = self.spec.non_ascii_replacement
        if repl is not None:
            words = [(w if w.isascii() else "".join(c if c.isascii() else repl for c in w), a, b)
                     for w, a, b in words]
        return words

    def count_words(self, text: str) -> int:
        """len(word_spans(text)), without building the words: string operations in C, for limits checked
        before any work."""
        text, _ = self._normalized(text)
        if self._specials is not None:
            return len(self._word_spans(text))
        translated = self._lowered(text).translate(self._table)
        if self.spec.char_level:
            return len(translated)
        if self._pattern is not None:
            return sum(1 for _ in self._pattern.finditer(translated))
        pieces = translated.split(self.spec.split)
        return len(pieces) - pieces.count("")

    def split_words(self, text: str) -> list[str]:
        return [w for w, _, _ in self.word_spans(text)]

    def encode_spans(self, text: str) -> tuple[list[int], int, list[tuple[int, int]]]:
        """Text -> unpadded ids (start_char first, end_char last), the count of OOV or dropped words, and the
        character span of each id in the original text (the start and end tokens' are (0, 0))."""
        norm, origin = self._normalized(text)
        if self._fast is not None and (fast := self._fast.encode(norm, spans=True)) is not None:
            ids, oov, spans = fast
        else:
            ids, oov, spans = self._encode_spans(norm)
        if origin is not None:
            starts, ends = origin
            spans = [(starts[a], ends[b - 1]) if b > a else (a, b) for a, b in spans]
        return ids, oov, spans

    def _encode_spans(self, text: str) -> tuple[list[int], int, list[tuple[int, int]]]:
        """The reference on a normalized text: spans are in it."""
        s = self.spec
        # keras.datasets applies the num_words/skip_top rule to start_char as well.
        ids = [] if self._start is None else [self._start]
        spans = [(0, 0)] * len(ids)
        oov = 0
        unknown = s.oov_char if s.unknown_words == "oov" else None
        get = self._ids.get
        for word, start, end in self._word_spans(text):
            i = get(word, unknown)
            if i is None or i == -1:
                oov += 1
                continue
            if i == s.oov_char:
                oov += 1
            ids.append(i)
            spans.append((start, end))
        if self._end is not None:
            ids.append(self._end)
            spans.append((0, 0))
        return ids, oov, spans

    def encode(self, text: str) -> tuple[list[int], int]:
        """Text -> unpadded id list (start_char first, end_char last) and the count of OOV or dropped words."""
        text, _ = self._normalized(text)
        if self._fast is not None and (fast := self._fast.encode(text)) is not None:
            return fast[0], fast[1]
        ids, oov, _ = self._encode_spans(text)
        return ids, oov

    def pad(self, sequences: list[list[int]], maxlen: int | None = None, dynamic: bool = False) -> np.ndarray:
        """keras pad_sequences with the spec's sides, into an int64 matrix (pad value the spec's pad_id).

        dynamic: pad only to the longest sequence (capped at maxlen), for models that ignore padding."""
        maxlen = maxlen or self.spec.maxlen
        if dynamic:
            maxlen = max(1, min(maxlen, max((len(s) for s in sequences), default=1)))
        out = np.full((len(sequences), maxlen), self.spec.pad_id, dtype=np.int64)
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

    def __call__(self, texts: list[str], maxlen: int | None = None,
                 dynamic: bool = False) -> tuple[np.ndarray, list[TokenStats]]:
        """Texts -> (padded id matrix, per-text stats)."""
        maxlen = maxlen or self.spec.maxlen
        if self._fast is None:
            encoded = [self.encode(text) for text in texts]
            counts = [[len(ids), oov, self.words_of(ids, oov)] for ids, oov in encoded]
            x = self.pad([ids for ids, _ in encoded], maxlen, dynamic)
        else:
            texts = list(texts) if self._normalize is None else [self._normalize(t)[0] for t in texts]
            x, counts = self._fast_batch(texts, maxlen, dynamic)
        return x, [TokenStats(kept=min(n, maxlen), oov=oov, truncated=n > maxlen, length=n, words=words)
                   for n, oov, words in counts]

    def words_of(self, ids: list[int], oov: int) -> int:
        """The word count of a text from its unpadded ids and OOV count (`encode`'s answer): the ids that are words
        (all but start_char and end_char) plus the dropped words, those OOV words that left no oov_char id."""
        body = ids[self._start is not None:len(ids) - (self._end is not None)]
        rare = body.count(self.spec.oov_char) if self.spec.oov_char is not None else 0
        return len(body) + oov - rare

    def _fast_batch(self, texts: list[str], maxlen: int, dynamic: bool) -> tuple[np.ndarray, list[list[int]]]:
        x = np.full((len(texts), maxlen), self.spec.pad_id, dtype=np.int64)  # the compiled rows fill the ids only
        counts = np.zeros((len(texts), 3), dtype=np.int64)  # ids before truncation, OOV, words
        pre_pad = self.spec.padding == "pre"
        assert self._fast is not None  # only called with the compiled tokenizer
        for row in self._fast.encode_batch(texts, x, counts, maxlen, pre_pad, self.spec.truncating == "pre"):
            ids, oov, _ = self._encode_spans(texts[row])  # declined: a lone surrogate, or non-ASCII under ascii_only
            x[row] = self.pad([ids], maxlen)[0]
            counts[row] = len(ids), oov, self.words_of(ids, oov)
        lengths = counts.tolist()
        if dynamic:
            width = max(1, min(maxlen, max((n for n, _, _ in lengths), default=1)))
            x = np.ascontiguousarray(x[:, maxlen - width:] if pre_pad else x[:, :width])
        return x, lengths


def _back(words: list[tuple[str, int, int]], origin: Origin) -> list[tuple[str, int, int]]:
    """Spans in a normalized text -> spans in its original."""
    if origin is None:
        return words
    starts, ends = origin
    return [(w, starts[a], ends[b - 1]) for w, a, b in words]


def build_vocabulary(texts: Iterable[str], spec_template: TokenizerSpec) -> list[str]:
    """Rank words by count on training texts, ties by first appearance (as Keras's Tokenizer.fit_on_texts)."""
    splitter = Tokenizer(TokenizerSpec(**{**asdict(spec_template), "words": []}))
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(splitter.split_words(text))
    # Counter keeps insertion order and sorted() is stable, so equal counts stay in first-seen order.
    return [w for w, _ in sorted(counts.items(), key=lambda kv: -kv[1])]
