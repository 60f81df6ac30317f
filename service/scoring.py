"""File scoring: parse rows incrementally, classify them in blocks, write one output row per input row.

Used by the HTTP endpoint and the command-line scorer alike. Memory stays bounded: rows are read,
tokenized, classified and written a block at a time, with at most two blocks in flight.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import time
from dataclasses import dataclass
from typing import AsyncIterator, Awaitable, Callable, Literal

import numpy as np
import orjson

from service.runtime import Classified

InputFormat = Literal["csv", "jsonl", "text"]
OutputFormat = Literal["jsonl", "csv"]
BLOCK_ROWS = 512


@dataclass
class Row:
    number: int  # 1-based data row (CSV header not counted)
    id: str | int | None
    text: str | None = None
    error: str | None = None


class RowReader:
    """Bytes in, complete rows out. Invalid UTF-8, invalid JSON or a missing text field makes an error row."""

    def __init__(self, fmt: InputFormat, text_column: str = "text", id_column: str | None = None,
                 max_chars: int | None = None):
        self.fmt, self.text_column, self.id_column, self.max_chars = fmt, text_column, id_column, max_chars
        self._buffer = b""
        self._record: list[bytes] = []  # physical CSV lines of a record still inside quotes
        self._header: list[str] | None = None
        self._count = 0

    @property
    def rows_read(self) -> int:
        return self._count

    def feed(self, data: bytes) -> list[Row]:
        self._buffer += data
        *lines, self._buffer = self._buffer.split(b"\n")
        return [r for line in lines if (r := self._line(line)) is not None]

    def close(self) -> list[Row]:
        rows = []
        if self._buffer:
            rows.append(self._line(self._buffer))
            self._buffer = b""
        if self._record:  # an unterminated quoted CSV field
            self._record = []
            rows.append(self._row(None, error="unterminated quoted field at end of file"))
        return [r for r in rows if r is not None]

    def _row(self, id_, text=None, error=None) -> Row:
        self._count += 1
        if text is not None and self.max_chars is not None and len(text) > self.max_chars:
            text, error = None, f"text has {len(text)} characters; the limit is {self.max_chars}"
        return Row(self._count, self._count if id_ is None else id_, text, error)

    def _line(self, raw: bytes) -> Row | None:
        if self.fmt == "csv":
            return self._csv_line(raw)
        try:
            line = raw.decode("utf-8").removesuffix("\r")
        except UnicodeDecodeError:
            return self._row(None, error="invalid UTF-8")
        if self.fmt == "text":
            return self._row(None, text=line)
        if not line.strip():
            return None
        try:  # orjson refuses lone surrogates and nesting past 1,024 levels: an error row, never an abort
            obj = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            return self._row(None, error=f"invalid JSON: {exc}")
        if not isinstance(obj, dict):
            return self._row(None, error="line is not a JSON object")
        id_ = obj.get(self.id_column or "id")
        id_ = id_ if isinstance(id_, (str, int)) and not isinstance(id_, bool) else None
        text = obj.get(self.text_column)
        if not isinstance(text, str):
            return self._row(id_, error=f"no string field {self.text_column!r}")
        return self._row(id_, text=text)

    def _csv_line(self, raw: bytes) -> Row | None:
        self._record.append(raw)
        joined = b"\n".join(self._record)
        if joined.count(b'"') % 2:  # inside a quoted field: the record continues on the next line
            return None
        self._record = []
        try:
            text = joined.decode("utf-8")
        except UnicodeDecodeError:
            return self._row(None, error="invalid UTF-8") if self._header is not None else self._bad_header()
        if not text.strip():
            return None
        try:
            fields = next(csv.reader([text.removesuffix("\r")]))
        except csv.Error as exc:
            return self._row(None, error=f"invalid CSV: {exc}")
        if self._header is None:
            self._header = fields
            return None
        record = dict(zip(self._header, fields))
        id_ = record.get(self.id_column or "id")
        if len(fields) != len(self._header):
            return self._row(id_, error=f"row has {len(fields)} fields; the header has {len(self._header)}")
        if self.text_column not in record:
            return self._row(id_, error=f"no column {self.text_column!r}; columns are {self._header}")
        return self._row(id_, text=record[self.text_column])

    def _bad_header(self) -> None:
        self._header = []
        return None


class RowWriter:
    """Rows and their probabilities -> JSON Lines or CSV text."""

    def __init__(self, fmt: OutputFormat, labels: list[str], probabilities: bool = False):
        self.fmt, self.labels, self.probabilities = fmt, labels, probabilities

    def header(self) -> str:
        if self.fmt == "jsonl":
            return ""
        cols = ["row", "id", "label", "score", "error"]
        if self.probabilities:
            cols += [f"p_{label}" for label in self.labels]
        return _csv_line(cols)

    def rows(self, rows: list[Row], probs: dict[int, np.ndarray]) -> str:
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n") if self.fmt == "csv" else None
        for row in rows:
            p = probs.get(row.number)
            if writer is None:
                entry: dict = {"row": row.number, "id": row.id}
                if p is None:
                    entry["error"] = row.error
                else:
                    best = int(p.argmax())
                    entry |= {"label": self.labels[best], "score": float(p[best])}
                    if self.probabilities:
                        entry["probabilities"] = dict(zip(self.labels, p.tolist()))
                out.write(orjson.dumps(entry).decode() + "\n")
            elif p is None:
                writer.writerow([row.number, row.id, "", "", row.error] + [""] * (len(self.labels) * self.probabilities))
            else:
                best = int(p.argmax())
                extra = [f"{x:.6g}" for x in p.tolist()] if self.probabilities else []
                writer.writerow([row.number, row.id, self.labels[best], f"{float(p[best]):.6g}", ""] + extra)
        return out.getvalue()

    def summary(self, summary: dict) -> str:
        if self.fmt == "jsonl":
            return json.dumps({"summary": summary}) + "\n"
        return "# summary " + " ".join(f"{k}={v}" for k, v in summary.items()) + "\n"


def _csv_line(values: list) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerow(values)
    return out.getvalue()


Classify = Callable[[list[str]], Awaitable[Classified]]


async def score_stream(chunks: AsyncIterator[bytes], reader: RowReader, writer: RowWriter, classify: Classify,
                       block_rows: int = BLOCK_ROWS, summary: bool = True) -> AsyncIterator[str]:
    """Yield output text, block by block, in input order; then the summary. While one block is being
    classified the next is read and parsed (a queue of two blocks keeps memory bounded)."""
    started = time.perf_counter()
    counts = {"rows": 0, "scored": 0, "errors": 0}
    blocks: asyncio.Queue = asyncio.Queue(maxsize=2)

    async def produce():
        pending: list[Row] = []
        async for data in chunks:
            pending.extend(reader.feed(data))
            while len(pending) >= block_rows:
                await blocks.put(pending[:block_rows])
                pending = pending[block_rows:]
        pending.extend(reader.close())
        for i in range(0, len(pending), block_rows):
            await blocks.put(pending[i:i + block_rows])
        await blocks.put(None)

    producer = asyncio.create_task(produce())
    try:
        if header := writer.header():
            yield header
        while True:
            getter = asyncio.ensure_future(blocks.get())
            done, _ = await asyncio.wait({getter, producer}, return_when=asyncio.FIRST_COMPLETED)
            if getter not in done and producer.exception() is not None:  # reading the body failed
                getter.cancel()
                raise producer.exception()
            block = await getter
            if block is None:
                break
            ok = [r for r in block if r.error is None]
            try:
                probs = (await classify([r.text for r in ok])).probs if ok else np.zeros((0, len(writer.labels)))
            except Exception as exc:  # noqa: BLE001 - a failed block becomes error rows; nothing is lost
                for r in ok:
                    r.error = f"inference failed: {exc}"
                ok, probs = [], np.zeros((0, len(writer.labels)))
            counts["rows"] += len(block)
            counts["scored"] += len(ok)
            counts["errors"] += len(block) - len(ok)
            yield writer.rows(block, {r.number: p for r, p in zip(ok, probs)})
        if summary:
            yield writer.summary(counts | {"seconds": round(time.perf_counter() - started, 3)})
    finally:
        producer.cancel()
