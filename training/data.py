"""Datasets with exactly the semantics of keras.datasets.{imdb,reuters}.load_data, plus users' own files.

With a local data directory (flag --data-dir or RNNSERVE_DATA_DIR) the arrays are read with numpy
and Keras's shuffle/offset/filter logic is applied here; without one, Keras downloads and caches them.
The local IMDB arrays are a verified reconstruction whose checksum Keras's loader would reject.
"""

from __future__ import annotations

import csv
import gzip
import json
import os
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rnnserve.service.core.normalize import DEFAULT
from rnnserve.service.core.rows import format_of, read_file
from rnnserve.service.core.tokenizer import Tokenizer, TokenizerSpec, build_vocabulary, word_index_to_words

DATA_DIR_ENV = "RNNSERVE_DATA_DIR"
KERAS_SEED = 113

IMDB_LABELS = ["negative", "positive"]
# keras.datasets.reuters.get_label_names(), index = label id.
REUTERS_LABELS = (
    "cocoa grain veg-oil earn acq wheat copper housing money-supply coffee sugar trade reserves ship cotton "
    "carcass crude nat-gas cpi money-fx interest gnp meal-feed alum oilseed gold tin strategic-metal livestock "
    "retail ipi iron-steel rubber heat jobs lei bop zinc orange pet-chem dlr gas silver wpi hog lead"
).split()

DATA_FILES = {
    "imdb": ("imdb_reconstructed.npz", "imdb_word_index.json"),
    "reuters": ("reuters.npz", "reuters_word_index.json"),
}


class DataError(Exception):
    """A dataset cannot be read; the message says what and where."""


@dataclass
class Dataset:
    name: str
    x_train: list[list[int]]
    y_train: np.ndarray
    x_test: list[list[int]]
    y_test: np.ndarray
    labels: list[str]
    tokenizer: TokenizerSpec  # turns raw text into the same ids as x_*

    @property
    def num_classes(self) -> int:
        return len(self.labels)


def resolve_data_dir(data_dir: str | Path | None) -> Path | None:
    value = data_dir or os.environ.get(DATA_DIR_ENV)
    if not value:
        return None
    path = Path(value)
    if not path.is_dir():
        raise DataError(f"data directory {path} does not exist")
    return path


def _remove_long_seq(maxlen: int, xs: list, ys: np.ndarray) -> tuple[list, np.ndarray]:
    # keras.utils.remove_long_seq keeps sequences strictly shorter than maxlen.
    keep = [i for i, x in enumerate(xs) if len(x) < maxlen]
    return [xs[i] for i in keep], ys[keep]


def _clip(xs, num_words, skip_top, oov_char):
    """Keras's num_words/skip_top rule; returns the num_words in effect (Keras: max id when None,
    which makes the single highest id OOV too, so the tokenizer spec must carry it)."""
    if not num_words:
        num_words = max(max(x) for x in xs if x)
    if oov_char is not None:
        return [[w if skip_top <= w < num_words else oov_char for w in x] for x in xs], num_words
    return [[w for w in x if skip_top <= w < num_words] for x in xs], num_words


def _keras_ids(xs, start_char, index_from):
    return [([start_char] if start_char is not None else []) + [int(w) + index_from for w in x] for x in xs]


def _read_word_index(path: Path) -> dict[str, int]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read word index {path}: {exc}") from exc


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise DataError(f"missing {path.name} in {path.parent}")
    try:
        with np.load(path, allow_pickle=True) as f:
            return {k: f[k] for k in f.files}
    except Exception as exc:  # noqa: BLE001 - any unreadable archive is a data error
        raise DataError(f"cannot read {path}: {exc}") from exc


def load_keras_dataset(
    name: str,
    data_dir: str | Path | None = None,
    num_words: int | None = None,
    skip_top: int = 0,
    maxlen: int | None = None,
    test_split: float = 0.2,
    seed: int = KERAS_SEED,
    start_char: int = 1,
    oov_char: int = 2,
    index_from: int = 3,
    pad_to: int = 200,
    padding: str = "pre",
    truncating: str = "pre",
    normalization: list[str] | None = None,
) -> Dataset:
    """keras.datasets.<name>.load_data(...) with the same arguments and results.

    `maxlen` filters sequences as Keras does; `pad_to`, `padding` and `truncating` only go into the
    tokenizer spec (padding is the model's business, not the loader's).
    """
    if name not in DATA_FILES:
        raise DataError(f"unknown dataset {name!r}; choose from {sorted(DATA_FILES)}")
    root = resolve_data_dir(data_dir)
    if root is None:
        load = dict(num_words=num_words, skip_top=skip_top, maxlen=maxlen, seed=seed, start_char=start_char,
                    oov_char=oov_char, index_from=index_from)
        (x_train, y_train), (x_test, y_test), word_index = _download(name, test_split, load)
        if not num_words:  # Keras's max id: every indexed word occurs in these datasets
            num_words = len(word_index) + index_from
    else:
        npz_name, index_name = DATA_FILES[name]
        arrays = _read_npz(root / npz_name)
        word_index = _read_word_index(root / index_name)
        rng = np.random.RandomState(seed)
        if name == "imdb":
            # One generator for both shuffles, train first, as keras.datasets.imdb does.
            parts = []
            for split in ("train", "test"):
                xs, ys = arrays[f"x_{split}"], arrays[f"y_{split}"]
                idx = np.arange(len(xs))
                rng.shuffle(idx)
                xs, ys = _keras_ids(xs[idx], start_char, index_from), ys[idx]
                if maxlen:
                    xs, ys = _remove_long_seq(maxlen, xs, ys)
                parts.append((xs, ys))
            (x_train, y_train), (x_test, y_test) = parts
            if not x_train or not x_test:
                raise DataError(f"maxlen={maxlen} leaves no IMDB sequence in a split")
            xs, num_words = _clip(x_train + x_test, num_words, skip_top, oov_char)
            x_train, x_test = xs[: len(x_train)], xs[len(x_train):]
        else:
            xs, ys = arrays["x"], arrays["y"]
            idx = np.arange(len(xs))
            rng.shuffle(idx)
            xs, ys = _keras_ids(xs[idx], start_char, index_from), ys[idx]
            if maxlen:
                xs, ys = _remove_long_seq(maxlen, xs, ys)
            xs, num_words = _clip(xs, num_words, skip_top, oov_char)
            cut = int(len(xs) * (1 - test_split))
            x_train, y_train, x_test, y_test = xs[:cut], ys[:cut], xs[cut:], ys[cut:]
    spec = TokenizerSpec(
        words=word_index_to_words(word_index),
        non_ascii_replacement="?" if name == "reuters" else None,
        unknown_words="drop",
        start_char=start_char,
        oov_char=oov_char,
        index_from=index_from,
        num_words=num_words,
        skip_top=skip_top,
        maxlen=pad_to,
        padding=padding,
        truncating=truncating,
        normalization=normalization or [],  # for serving raw text: the ids here are Keras's, not ours
    )
    labels = IMDB_LABELS if name == "imdb" else REUTERS_LABELS
    return Dataset(name, list(x_train), np.asarray(y_train, dtype=np.int64), list(x_test),
                   np.asarray(y_test, dtype=np.int64), list(labels), spec)


def _download(name: str, test_split: float, kwargs: dict):
    """Keras's own download and cache, for users without a local copy: keras.datasets.NAME.load_data(**kwargs)
    (and test_split for Reuters)."""
    try:
        import keras  # training extra only
    except ImportError as exc:
        raise DataError("no data directory given and Keras is not installed; pass --data-dir") from exc
    module = getattr(keras.datasets, name)
    if name == "reuters":
        kwargs = {**kwargs, "test_split": test_split}
    try:
        train, test = module.load_data(**kwargs)
        word_index = module.get_word_index()
    except Exception as exc:  # noqa: BLE001 - network and cache failures surface as one clear message
        raise DataError(f"could not download the {name} dataset ({exc}); pass --data-dir with a local copy") from exc
    return train, test, word_index


def read_text_file(path: str | Path, text_column: str = "text",
                   label_column: str = "label") -> tuple[list[str], list[str]]:
    """Texts and string labels from a CSV (with header) or JSON Lines file, optionally gzipped, read as the
    scorer reads files (rnnserve.service.core.rows: byte-order marks, UTF-16, every line ending, fields as
    long as a text may be). Raises DataError naming the first row that cannot be read."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"file {path} does not exist")
    fmt = "jsonl" if format_of(path.name) == "jsonl" else "csv"
    texts, labels = [], []
    try:
        for row in read_file(path, fmt, text_column, label_column):
            if row.error is not None:
                raise DataError(f"{path}: row {row.number}: {row.error}")
            texts.append(row.text)
            labels.append(row.label)
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"cannot read {path}: {exc}") from exc
    if not texts:
        raise DataError(f"{path} holds no rows")
    return texts, labels


def shuffled_split(n: int, test_split: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Row indices shuffled with seed, then cut: the first (1 - test_split) train, the rest test."""
    idx = np.arange(n)
    np.random.RandomState(seed).shuffle(idx)
    cut = int(n * (1 - test_split))
    if cut == 0 or cut == n:
        raise DataError(f"{n} rows cannot be split with test_split={test_split}")
    return idx[:cut], idx[cut:]


def load_text_dataset(
    path: str | Path,
    text_column: str = "text",
    label_column: str = "label",
    num_words: int | None = 20000,
    test_split: float = 0.2,
    seed: int = KERAS_SEED,
    pad_to: int = 200,
    padding: str = "pre",
    truncating: str = "pre",
    char_level: bool = False,
    normalization: list[str] | None = None,
) -> Dataset:
    """A user's labelled text: shuffled with `seed`, split, vocabulary built on the training split only.
    char_level: characters are the tokens, lower-cased as Python's str.lower() does (as Keras's).
    normalization: the tokenizer's rules (service/core/normalize.py; default normalize.DEFAULT)."""
    texts, raw_labels = read_text_file(path, text_column, label_column)
    labels = sorted(set(raw_labels))
    if len(labels) < 2:
        raise DataError(f"{path} has only one label ({labels[0]!r}); a classifier needs two or more")
    y = np.array([labels.index(label) for label in raw_labels], dtype=np.int64)
    train_idx, test_idx = shuffled_split(len(texts), test_split, seed)
    template = TokenizerSpec(words=[], unknown_words="oov", num_words=num_words, maxlen=pad_to,
                             padding=padding, truncating=truncating, char_level=char_level,
                             lower_ascii_only=not char_level,
                             normalization=list(DEFAULT if normalization is None else normalization))
    template.words = build_vocabulary((texts[i] for i in train_idx), template)
    tok = Tokenizer(template)
    encode = lambda ids: [tok.encode(texts[i])[0] for i in ids]  # noqa: E731
    return Dataset(Path(path).name, encode(train_idx), y[train_idx], encode(test_idx), y[test_idx], labels, template)


def imdb_raw_train_in_keras_order(data_dir: str | Path) -> tuple[list[str], np.ndarray]:
    """The raw training reviews in the order of x_train in the IMDB arrays (before load_data's shuffle).

    Keras's order is all pos files then all neg files, each sorted lexicographically by file name.
    """
    path = Path(data_dir) / "raw" / "imdb_train.csv.gz"
    with gzip.open(path, "rt", encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    rows.sort(key=lambda r: (r["sentiment"] != "positive", r["id"].rsplit("/", 1)[1]))
    return [r["review"] for r in rows], np.array([int(r["label"]) for r in rows])


def reuters_raw_train(data_dir: str | Path) -> tuple[list[str], np.ndarray]:
    """The raw texts behind Reuters x_train (load_data defaults), already in Keras order."""
    path = Path(data_dir) / "raw" / "reuters_train_raw.csv.gz"
    with gzip.open(path, "rt", encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    return [r["text"] for r in rows], np.array([int(r["keras_label"]) for r in rows])


def dataset_documents(name: str, data_dir: str | Path, spec: TokenizerSpec) -> tuple[list[str], list[list[int]]]:
    """The raw training documents of a Keras dataset and the ids `keras.datasets.NAME.load_data` gives each
    (the spec's start_char, index_from, num_words, skip_top and oov_char applied to the stored word ranks, as
    load_data applies them), in the arrays' stored order. The reference for imports' parity gate."""
    root = Path(data_dir)
    if name == "imdb":
        texts, _ = imdb_raw_train_in_keras_order(root)
        ranks = _read_npz(root / DATA_FILES["imdb"][0])["x_train"]
    else:
        with gzip.open(root / "raw" / "reuters_train_raw.csv.gz", "rt", encoding="utf-8", newline="") as fh:
            rows = list(csv.DictReader(fh))
        stored = _read_npz(root / DATA_FILES["reuters"][0])["x"]
        texts, ranks = [r["text"] for r in rows], [stored[int(r["npz_index"])] for r in rows]
    ids, _ = _clip(_keras_ids(ranks, spec.start_char, spec.index_from), spec.num_words, spec.skip_top, spec.oov_char)
    return texts, ids
