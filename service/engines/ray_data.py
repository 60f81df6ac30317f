"""Offline scoring on Ray Data: files of texts in, one scored row per input row out, across a Ray cluster.

Reading uses the local scorer's own RowReader (service/core/rows.py), streamed a megabyte at a time from any
filesystem pyarrow knows (local paths, s3://, gs://, hdfs://), so every input row, even one that cannot be
parsed, becomes exactly one output row with its 1-based row number in its file. Parquet files are read a
record batch at a time. Scoring is `map_batches` with a callable class: each actor opens the package once
with the runtime (TextClassifier) and classifies whole batches. Ray writes the result as a directory of
Parquet or JSON Lines files; rows carry `row` (and `file`, for several input files), so the input order is
recovered by sorting on them.

    from rnnserve.service.engines.ray_data import score_files
    score_files("reviews.csv", "models/imdb-lstm/1", "scores/", ScoreOptions(probabilities=True), actors=2)
"""

from __future__ import annotations

import asyncio
import functools
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import ray
from ray.data.expressions import col

from rnnserve.service.core.rows import SUFFIX_FORMATS, Row, format_of
from rnnserve.service.runtime.base import RuntimeOptions
from rnnserve.service.runtime.text import TextClassifier, classify_each
from rnnserve.service.scoring.pipeline import ScoreOptions
from rnnserve.service.settings import MAX_TEXT_CHARS

FORMATS = SUFFIX_FORMATS | {".parquet": "parquet"}
CHUNK = 1 << 20
BLOCK_ROWS = 4096


def input_format(path: str) -> str:
    fmt = format_of(path, FORMATS)
    if fmt is None:
        raise ValueError(f"cannot tell the format of {path}; name it .csv, .jsonl, .txt or .parquet (or .gz)")
    return fmt


def list_files(source: str | list[str]) -> list[tuple[pafs.FileSystem, str]]:
    """Each input file with its filesystem; a directory stands for the files under it, in name order."""
    files = []
    for item in [source] if isinstance(source, str) else source:
        fs, path = pafs.FileSystem.from_uri(item) if "://" in item else (pafs.LocalFileSystem(), os.path.abspath(item))
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.Directory:
            found = fs.get_file_info(pafs.FileSelector(path, recursive=True))
            files += [(fs, f.path) for f in sorted(found, key=lambda f: f.path) if f.type == pafs.FileType.File]
        elif info.type == pafs.FileType.File:
            files.append((fs, path))
        else:
            raise FileNotFoundError(f"no file or directory {item}")
    return files


class TextFiles(ray.data.Datasource):
    """One read task per file, yielding blocks of (file, row, id, text, error)."""

    def __init__(self, source: str | list[str], options: ScoreOptions = ScoreOptions(),
                 max_chars: int = MAX_TEXT_CHARS):
        self.files = list_files(source)
        self.formats = [options.input_format or input_format(path) for _, path in self.files]
        self.options, self.max_chars = options, max_chars

    def estimate_inmemory_data_size(self) -> int | None:
        return sum(fs.get_file_info(path).size or 0 for fs, path in self.files)

    def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None,
                       data_context=None) -> list[ray.data.ReadTask]:
        return [ray.data.ReadTask(functools.partial(self._read, fs, path, fmt),
                                  ray.data.block.BlockMetadata(num_rows=None, size_bytes=None, exec_stats=None,
                                                               input_files=(path,)))
                for (fs, path), fmt in zip(self.files, self.formats)]

    def _read(self, fs: pafs.FileSystem, path: str, fmt: str) -> Iterator[pa.Table]:
        rows = self._parquet_rows(fs, path) if fmt == "parquet" else self._text_rows(fs, path, fmt)
        block: list[Row] = []
        for row in rows:
            block.append(row)
            if len(block) == BLOCK_ROWS:
                yield _table(path, block)
                block = []
        if block:
            yield _table(path, block)

    def _text_rows(self, fs: pafs.FileSystem, path: str, fmt: str) -> Iterator[Row]:
        reader = self.options.reader(fmt, self.max_chars)
        gzip = "gzip" if path.endswith(".gz") else None
        with fs.open_input_stream(path, compression=gzip) as stream:
            while data := stream.read(CHUNK):
                yield from reader.feed(data)
        yield from reader.close()

    def _parquet_rows(self, fs: pafs.FileSystem, path: str) -> Iterator[Row]:
        number = 0
        with fs.open_input_file(path) as fh:
            table = pq.ParquetFile(fh)
            names = table.schema_arrow.names
            text_column = self.options.text_column
            id_column = self.options.id_column or ("id" if "id" in names else None)
            has_text = text_column in names
            no_text = f"no string in column {text_column!r}" if has_text else \
                f"no column {text_column!r}; columns are {names}"
            for batch in table.iter_batches(BLOCK_ROWS, columns=[c for c in (text_column, id_column) if c in names]):
                texts = batch.column(text_column).to_pylist() if has_text else [None] * batch.num_rows
                ids = batch.column(id_column).to_pylist() if id_column else [None] * batch.num_rows
                for text, id_ in zip(texts, ids):
                    number += 1
                    id_ = None if id_ is None else str(id_)
                    if not isinstance(text, str):
                        yield Row(number, id_, error=no_text)
                    elif len(text) > self.max_chars:
                        yield Row(number, id_, error=f"text has {len(text)} characters; the limit is {self.max_chars}")
                    else:
                        yield Row(number, id_, text)


def _table(path: str, rows: list[Row]) -> pa.Table:
    return pa.table({"file": pa.array([path] * len(rows), pa.string()),
                     "row": pa.array([r.number for r in rows], pa.int64()),
                     "id": pa.array([r.id for r in rows], pa.string()),
                     "text": pa.array([r.text for r in rows], pa.large_string()),
                     "error": pa.array([r.error for r in rows], pa.string())})


class ScoreBatches:
    """The map_batches callable: one runtime per actor, opened once; classifies a batch of rows."""

    def __init__(self, package: str, probabilities: bool = False, threads: int = 1, batch_size: int = 256):
        self.model = TextClassifier.open(package, RuntimeOptions(intra_op_threads=threads,
                                                                 max_batch_size=batch_size, warmup=False))
        self.probabilities = probabilities

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        labels = self.model.labels
        errors = list(batch["error"])
        ok = [i for i, e in enumerate(errors) if e is None]
        probs = np.full((len(errors), len(labels)), np.nan, dtype=np.float32)
        probs[ok], failed = self._classify([batch["text"][i] for i in ok])
        for i, reason in zip(ok, failed):
            if reason is not None:
                errors[i] = f"inference failed: {reason}"
        scored = np.array([e is None for e in errors], dtype=bool)
        best = np.nan_to_num(probs).argmax(1)
        # Typed columns: a batch without one error would otherwise write its error column as type null, and
        # files of one output would disagree on their schema.
        columns = {"file": pa.array(batch["file"], pa.string()), "row": pa.array(batch["row"], pa.int64()),
                   "id": pa.array(batch["id"], pa.string()),
                   "label": pa.array([labels[b] for b in best], pa.string(), mask=~scored),
                   "score": pa.array(probs[np.arange(len(errors)), best], pa.float64(), mask=~scored),
                   "error": pa.array(errors, pa.string())}
        if self.probabilities:
            columns |= {f"p_{label}": pa.array(probs[:, j], pa.float64(), mask=~scored)
                        for j, label in enumerate(labels)}
        return pa.table(columns)

    def _classify(self, texts: list[str]) -> tuple[np.ndarray, list[str | None]]:
        """Probabilities and, per text, None or why it failed (classify_each: the scorer's own rule)."""
        async def predict(batch: list[str]):
            return self.model.predict_batch(batch)

        return asyncio.run(classify_each(predict, texts, len(self.model.labels)))


def score_dataset(ds: ray.data.Dataset, package: str, *, actors: int = 1, probabilities: bool = False,
                  threads: int = 1, batch_size: int = 256) -> ray.data.Dataset:
    """Rows of (file, row, id, text, error), as TextFiles reads them, -> scored rows (file, row, id, label,
    score, error[, p_LABEL...]): one output row per input row. `actors` runtimes, each with `threads`
    onnxruntime threads and one CPU reserved."""
    return ds.map_batches(ScoreBatches, fn_constructor_kwargs={"package": str(Path(package).resolve()),
                                                               "probabilities": probabilities,
                                                               "threads": threads, "batch_size": batch_size},
                          batch_size=batch_size, concurrency=actors, num_cpus=1, batch_format="numpy")


def score_files(source: str | list[str], package: str, output: str, options: ScoreOptions = ScoreOptions(), *,
                actors: int = 1, threads: int = 1, batch_size: int = 256) -> dict:
    """Score files (a path, a directory, a URI, or a list of them) with a package, writing a directory of
    Parquet (options.output_format None or "parquet"), JSON Lines or CSV files. Connects to the Ray cluster
    already initialised, or starts a local one. Returns the counts of rows, scored rows and error rows."""
    files = TextFiles(source, options)
    # Reading takes no CPU reservation: it costs a fraction of scoring, and N actors may then use N CPUs (a read
    # task waiting for a CPU that the actors hold would wait for ever).
    rows = ray.data.read_datasource(files, num_cpus=0)
    scored = score_dataset(rows, package, actors=actors, probabilities=options.probabilities, threads=threads,
                           batch_size=batch_size)
    if len(files.files) == 1:
        scored = scored.drop_columns(["file"])
    scored = scored.materialize()  # scored rows are small (no text): kept for the write and the counts
    write = {"parquet": scored.write_parquet, "jsonl": scored.write_json, "csv": scored.write_csv}
    write[options.output_format or "parquet"](output)
    rows, errors = scored.count(), scored.filter(expr=col("error").is_not_null()).count()
    return {"rows": rows, "scored": rows - errors, "errors": errors}
