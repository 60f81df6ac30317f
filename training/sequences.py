"""Numeric sequences: fixed-length float inputs [N, T, F] with a class or a number per sequence (many-to-one)
or a number per step (many-to-many), from a CSV, an NPZ, or the synthetic noisy waves generated here.

CSV: a header; the target column (`label_column`, default "label": class names, or numbers with
`regression`), every other column a value, in time order and step-major (step 0's F features, then step 1's).
NPZ: `x` [N, T, F] or [N, T] (F = 1); `y` [N] (class ids or names, or numbers with `regression`), or [N, T]
(a number per step); optional `labels` (class names by id).
"""

from __future__ import annotations

import csv
import gzip
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rnnserve.service.core.package import Task
from rnnserve.training.data import KERAS_SEED, DataError, shuffled_split

WAVE_KINDS = ["sine", "square", "triangle", "sawtooth"]
# name -> what the synthetic set asks: the next value, the wave's kind, or the next value at every step
SYNTHETIC = {"waves-next": "regression", "waves-kind": "classification", "waves-steps": "per-step"}
SYNTHETIC_EXAMPLES = 5000


@dataclass
class SequenceData:
    name: str
    x_train: np.ndarray  # [N, T, F] float32
    y_train: np.ndarray  # class ids [N], values [N] or values per step [N, T]
    x_test: np.ndarray
    y_test: np.ndarray
    labels: list[str] | None  # class names; None for regression

    @property
    def task(self) -> Task:
        return Task.SEQUENCE_CLASSIFICATION if self.labels else Task.SEQUENCE_REGRESSION

    @property
    def per_step(self) -> bool:
        return self.y_train.ndim == 2

    @property
    def shape(self) -> tuple[int, int]:
        return self.x_train.shape[1], self.x_train.shape[2]


def waves(kind: str, n: int, length: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n noisy periodic signals of length + 1 steps: random frequency, phase and amplitude, noise sd 0.1.
    Returns the values [n, length + 1] and each signal's kind id."""
    rng = np.random.default_rng(seed)
    kinds = rng.integers(0, len(WAVE_KINDS), n) if kind == "waves-kind" else np.zeros(n, np.int64)
    freq = rng.uniform(0.05, 0.25, (n, 1))  # cycles per step
    phase = rng.uniform(0, 1, (n, 1))
    amp = rng.uniform(0.5, 1.5, (n, 1))
    cycle = (freq * np.arange(length + 1) + phase) % 1.0  # position in the period, [0, 1)
    shapes = np.stack([np.sin(2 * np.pi * cycle), np.where(cycle < 0.5, 1.0, -1.0),
                       4 * np.abs(cycle - 0.5) - 1, 2 * cycle - 1])  # [kinds, n, steps]
    values = amp * shapes[kinds, np.arange(n)] + rng.normal(0, 0.1, (n, length + 1))
    return values.astype(np.float32), kinds


def synthetic(name: str, length: int, test_split: float, seed: int) -> SequenceData:
    values, kinds = waves(name, SYNTHETIC_EXAMPLES, length, seed)
    x = values[:, :length, None]
    if SYNTHETIC[name] == "classification":
        y, labels = kinds, WAVE_KINDS
    elif SYNTHETIC[name] == "regression":
        y, labels = values[:, length], None
    else:
        y, labels = values[:, 1:], None
    return _split(name, x, y, labels, test_split, seed)


def _split(name, x, y, labels, test_split, seed) -> SequenceData:
    train, test = shuffled_split(len(x), test_split, seed)
    return SequenceData(name, x[train], y[train], x[test], y[test], labels)


def _classes(raw: np.ndarray, names: list[str] | None) -> tuple[np.ndarray, list[str]]:
    if names is None and raw.dtype.kind in "iu":
        names = [str(i) for i in range(int(raw.max()) + 1)]
    if names is not None:
        if raw.dtype.kind not in "iu" or raw.min() < 0 or raw.max() >= len(names):
            raise DataError(f"class ids must be integers in 0..{len(names) - 1}")
        return raw.astype(np.int64), list(names)
    names = sorted({str(v) for v in raw})
    return np.array([names.index(str(v)) for v in raw], np.int64), names


def read_npz(path: Path, regression: bool) -> tuple[np.ndarray, np.ndarray, list[str] | None]:
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read {path}: {exc}") from exc
    if "x" not in arrays or "y" not in arrays:
        raise DataError(f"{path} needs arrays 'x' and 'y'; it has {sorted(arrays)}")
    x, y = arrays["x"], arrays["y"]
    x = x[..., None] if x.ndim == 2 else x
    if x.ndim != 3 or len(x) != len(y) or x.dtype.kind not in "fiu":
        raise DataError(f"'x' must be numbers shaped [N, T, F] or [N, T] and 'y' have N rows; got {x.shape}, "
                        f"{y.shape}")
    if y.ndim == 2:
        if y.shape[1] != x.shape[1] or y.dtype.kind not in "fiu":
            raise DataError(f"a per-step 'y' must be numbers shaped [N, T] = [N, {x.shape[1]}]; got {y.shape}")
        return x.astype(np.float32), y.astype(np.float32), None
    if regression:
        return x.astype(np.float32), y.astype(np.float32), None
    names = [str(n) for n in arrays["labels"]] if "labels" in arrays else None
    y, names = _classes(y, names)
    return x.astype(np.float32), y, names


def read_csv(path: Path, label_column: str, features: int, regression: bool):
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8", newline="") as fh:
            reader = csv.reader(fh)
            header = next(reader, None)
            if not header or label_column not in header:
                raise DataError(f"{path} needs a header with a {label_column!r} column; got {header}")
            target = header.index(label_column)
            rows = [row for row in reader if row]
    except (UnicodeDecodeError, csv.Error, OSError) as exc:
        raise DataError(f"cannot parse {path}: {exc}") from exc
    width = len(header) - 1
    if not rows or width < features or width % features:
        raise DataError(f"{path}: {width} value columns do not make steps of {features} feature(s)")
    try:
        x = np.array([[float(v) for i, v in enumerate(row) if i != target] for row in rows], np.float32)
    except ValueError as exc:
        raise DataError(f"{path}: a value is not a number ({exc})") from exc
    if x.ndim != 2 or x.shape[1] != width:
        raise DataError(f"{path}: every row needs {width + 1} columns")
    x = x.reshape(len(rows), width // features, features)
    raw = np.array([row[target] for row in rows])
    if regression:
        try:
            return x, raw.astype(np.float32), None
        except ValueError as exc:
            raise DataError(f"{path}: a {label_column!r} value is not a number ({exc})") from exc
    y, names = _classes(raw, None)
    return x, y, names


def load_sequence_dataset(dataset: str, length: int, features: int, label_column: str, regression: bool,
                          test_split: float, seed: int = KERAS_SEED) -> SequenceData:
    if dataset in SYNTHETIC:
        return synthetic(dataset, length, test_split, seed)
    path = Path(dataset)
    if not path.is_file():
        raise DataError(f"file {path} does not exist")
    if path.name.endswith(".npz"):
        x, y, labels = read_npz(path, regression)
    else:
        x, y, labels = read_csv(path, label_column, features, regression)
    if labels is not None and len(labels) < 2:
        raise DataError(f"{path} has one class; a classifier needs two or more")
    return _split(path.name, x, y, labels, test_split, seed)


def normalization(x: np.ndarray) -> dict:
    """Per-feature mean and standard deviation (1 where a feature is constant) of training sequences."""
    mean = x.reshape(-1, x.shape[-1]).mean(axis=0)
    std = x.reshape(-1, x.shape[-1]).std(axis=0)
    return {"mean": mean.astype(float).tolist(), "std": np.where(std > 0, std, 1.0).astype(float).tolist()}
