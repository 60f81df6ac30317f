"""A package's reference profile (profile.json, service/core/profile.py): the drift signals' histograms over
reference texts, run through the package's own tokenizer and model as the server runs them.

Export (and distill, through it) profiles a sample of the training split's raw texts, import its parity texts or
--reference-texts, quantize the INT8 model on its source's training texts; `rnnserve-train profile PACKAGE
--texts FILE` adds or refreshes one in any package (older ones), resealed.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort

from rnnserve.service.core import profile
from rnnserve.service.core.package import MANIFEST, Task, parse_metadata, read_package, seal
from rnnserve.service.core.rows import format_of, read_file
from rnnserve.service.core.tokenizer import Tokenizer, TokenizerSpec

PROFILE_TEXTS = 2000  # texts sampled for a profile: PSI's sampling noise ~ bins / texts, 0.005 at 10 bins
BATCH = 256
log = logging.getLogger("rnnserve.training")


def sample(texts: Sequence[str], limit: int = PROFILE_TEXTS, seed: int = 0) -> list[str]:
    """At most `limit` texts, drawn without replacement with a fixed seed (all of them, in order, when fewer)."""
    if len(texts) <= limit:
        return list(texts)
    return [texts[i] for i in sorted(np.random.default_rng(seed).choice(len(texts), limit, replace=False))]


def read_texts(path: Path, column: str, count: int) -> list[str]:
    """The first `count` texts of a CSV (column), JSONL (key) or text file (one a line, gzip too), as the scorer
    reads them (a line at a time: memory bounded whatever the file). ValueError naming the file and row."""
    fmt = format_of(path.name)
    if fmt is None:
        raise ValueError(f"{path}: expected a .csv, .jsonl or .txt file (gzip too)")
    texts: list[str] = []
    try:
        for row in read_file(path, fmt, column):
            if len(texts) == count:
                break
            if row.error is not None:  # a text left out would leave the sample short, and the user unaware
                hint = " (--text-column names the texts' column or key)" if row.error.startswith("no ") else ""
                raise ValueError(f"{path}: row {row.number}: {row.error}{hint}")
            texts.append(row.text)
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc}") from exc
    if not texts:
        raise ValueError(f"{path} has no texts")
    return texts


def write_profile(directory: str | Path, texts: Sequence[str], source: str) -> profile.Profile | None:
    """Write DIRECTORY/profile.json from the package files there (model.onnx, tokenizer.json, metadata.json;
    sealed or not: the caller seals). None, nothing written, for a package that is no text classifier."""
    path = Path(directory)
    meta = parse_metadata((path / "metadata.json").read_bytes())
    if meta.task != Task.TEXT_CLASSIFICATION:
        return None
    if not texts:
        raise ValueError("a profile needs at least one text")
    tokenizer = Tokenizer(TokenizerSpec.load(path / "tokenizer.json"))
    session = ort.InferenceSession(str(path / "model.onnx"), providers=["CPUExecutionProvider"])
    stats, probabilities = [], []
    for i in range(0, len(texts), BATCH):
        ids, batch_stats = tokenizer(list(texts[i:i + BATCH]), dynamic=meta.dynamic_length)
        stats += batch_stats
        probabilities.append(session.run([meta.output.name], {meta.input.name: ids})[0])
    built = profile.build(stats, np.concatenate(probabilities), source)
    (path / profile.PROFILE).write_text(built.to_json(meta.labels), encoding="utf-8")
    return built


def profile_package(package_dir: str | Path, texts: Sequence[str], source: str) -> profile.Profile:
    """Add or refresh a sealed package's profile.json and seal it again (the package is checked whole first)."""
    package = read_package(package_dir)
    if package.task != Task.TEXT_CLASSIFICATION:
        raise ValueError(f"{package.path} is a {package.task} package; drift profiles are for text classifiers")
    built = write_profile(package.path, texts, source)
    assert built is not None  # a text classifier
    (package.path / MANIFEST).unlink()
    seal(package.path)
    read_package(package.path)
    return built


def training_texts(dataset: str, data_dir: str | Path | None, text_column: str = "text",
                   test_split: float = 0.2, seed: int = 113) -> tuple[list[str], str] | None:
    """A sample of a dataset's raw training texts and a sentence saying which: the Keras datasets' (imdb,
    reuters: data_dir/raw) or a user file's training split; None when the raw texts are not there."""
    from rnnserve.training import data

    root = data.resolve_data_dir(data_dir)
    try:
        if dataset in ("imdb", "reuters"):
            if root is None:
                return None
            texts = (data.imdb_raw_train_in_keras_order(root) if dataset == "imdb" else data.reuters_raw_train(root))[0]
            what = f"{dataset} training split (raw)"
        else:
            all_texts, _ = data.read_text_file(dataset, text_column)
            train, _ = data.shuffled_split(len(all_texts), test_split, seed)
            texts, what = [all_texts[i] for i in train], f"{Path(dataset).name} training split"
    except (OSError, data.DataError) as exc:
        log.warning("no drift profile: the training texts cannot be read (%s)", exc)
        return None
    chosen = sample(texts)
    return chosen, f"{len(chosen)} texts sampled (seed 0) from the {what}, {len(texts)} texts"
