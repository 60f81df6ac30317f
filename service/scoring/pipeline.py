"""File scoring: parse rows incrementally, classify them in blocks, write one output row per input row.

Used by the HTTP endpoint and the command-line scorer alike. Memory stays bounded: rows are read,
tokenized, classified and written a block at a time, with at most two blocks in flight.
"""

from __future__ import annotations

import asyncio
import codecs
import csv
import io
import json
import time
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Literal

import numpy as np
import orjson

from rnnserve.service.core.errors import BadRequest, PayloadTooLarge, echo
from rnnserve.service.runtime.text import Classify, classify_each

InputFormat = Literal["csv", "jsonl", "text"]
OutputFormat = Literal["jsonl", "csv"]
BLOCK_ROWS = 512
SUFFIX_FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".txt": "text"}


def format_of(name: str, formats: dict[str, str] = SUFFIX_FORMATS) -> str | None:
    """A file's input format from its name (a .gz suffix looked through), or None."""
    base = name.removesuffix(".gz")
    return next((fmt for suffix, fmt in formats.items() if base.endswith(suffix)), None)


@dataclass
class Row:
    number: int  # 1-based data row (CSV header not counted)
    id: str | int | None
    text: str | None = None
    error: str | None = None


class RowReader:
    """Bytes in, complete rows out: every input row becomes exactly one output row, in order. Invalid UTF-8,
    invalid JSON, a missing text field, a line over the size limit or a quoted CSV field that never closes
    makes an error row, and reading goes on. Linear time and bounded memory whatever the input: a line is
    given up (one error row) once it passes `max_line_bytes`, and a quoted CSV field may span at most
    MAX_RECORD_LINES lines and `max_line_bytes` in all before its first line becomes an error row and the
    lines after it are read afresh. A UTF-8 byte-order mark is skipped; UTF-16 input is transcoded."""

    MAX_RECORD_LINES = 64

    def __init__(self, fmt: InputFormat, text_column: str = "text", id_column: str | None = None,
                 max_chars: int | None = None):
        self.fmt, self.text_column, self.id_column, self.max_chars = fmt, text_column, id_column, max_chars
        # Room for a maximum-size text in UTF-8 plus the other CSV columns or JSON fields.
        self.max_line_bytes = (max_chars or 1_000_000) * 4 + 65_536
        csv.field_size_limit(max(csv.field_size_limit(), self.max_line_bytes))  # fields as long as the limits
        self._parts: list[bytes] = []  # the current line so far (not joined until it ends)
        self._size = 0
        self._skipping = False  # inside a line that was given up: drop bytes until it ends
        self._started = False
        self._utf16 = None  # an incremental decoder when the input is UTF-16
        self._record: list[str] = []  # physical CSV lines of a record whose quoted field is still open
        self._record_bytes = 0
        self._header: list[str] | None = None
        self._count = 0

    @property
    def rows_read(self) -> int:
        return self._count

    def feed(self, data: bytes) -> list[Row]:
        data = self._transcode(data)
        rows: list[Row] = []
        if self._skipping:
            cut = data.find(b"\n")
            if cut < 0:
                return rows
            data, self._skipping = data[cut + 1:], False
        if b"\n" not in data:  # no line ends here: keep the piece, joined only once its line ends
            self._parts.append(data)
            self._size += len(data)
            if self._size > self.max_line_bytes:
                rows += self._too_long()
            return rows
        lines = data.split(b"\n")
        lines[0] = b"".join(self._parts) + lines[0]
        tail = lines.pop()
        self._parts, self._size = [tail], len(tail)
        for line in lines:
            rows += self._too_long(keep_reading=True) if len(line) > self.max_line_bytes else self._line(line)
        if self._size > self.max_line_bytes:
            rows += self._too_long()
        return rows

    def close(self) -> list[Row]:
        rows = [] if self._skipping else self._line(b"".join(self._parts)) if self._size else []
        self._parts, self._size = [], 0
        if self._record:  # a quoted field open at the end of the file
            rows += self._resync()
        return rows

    def _transcode(self, data: bytes) -> bytes:
        if not self._started:
            self._started = True
            if data[:2] in (b"\xff\xfe", b"\xfe\xff"):
                self._utf16 = codecs.getincrementaldecoder("utf-16")(errors="replace")
            elif data.startswith(codecs.BOM_UTF8):
                data = data[len(codecs.BOM_UTF8):]
        if self._utf16 is not None:
            return self._utf16.decode(data).encode("utf-8")
        return data

    def _too_long(self, keep_reading: bool = False) -> list[Row]:
        """The line passed the size limit: one error row for it (and for a CSV record it was part of)."""
        self._parts, self._size, self._skipping = [], 0, not keep_reading
        self._record, self._record_bytes = [], 0
        return [self._row(None, error=f"line longer than {self.max_line_bytes} bytes")]

    def _row(self, id_, text=None, error=None) -> Row:
        self._count += 1
        if text is not None and self.max_chars is not None and len(text) > self.max_chars:
            text, error = None, f"text has {len(text)} characters; the limit is {self.max_chars}"
        return Row(self._count, self._count if id_ is None else id_, text, error)

    def _line(self, raw: bytes) -> list[Row]:
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            self._record, self._record_bytes = [], 0
            if self.fmt == "csv" and self._header is None:
                self._header = []  # an unreadable header: every row will say what is missing
                return []
            return [self._row(None, error="invalid UTF-8")]
        if self.fmt == "csv":
            return self._csv_line(line + "\n", len(raw))
        line = line.removesuffix("\r")
        if self.fmt == "text":
            return [self._row(None, text=line)]
        if not line.strip():
            return []
        try:  # orjson refuses lone surrogates and nesting past 1,024 levels: an error row, never an abort
            obj = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            return [self._row(None, error=f"invalid JSON: {exc}")]
        if not isinstance(obj, dict):
            return [self._row(None, error="line is not a JSON object")]
        id_ = obj.get(self.id_column or "id")
        id_ = id_ if isinstance(id_, (str, int)) and not isinstance(id_, bool) else None
        text = obj.get(self.text_column)
        if not isinstance(text, str):
            return [self._row(id_, error=f"no string field {echo(self.text_column)}")]
        return [self._row(id_, text=text)]

    def _csv_line(self, line: str, size: int) -> list[Row]:
        self._record.append(line)
        self._record_bytes += size
        try:  # strict: a quoted field still open at the end of these lines is an error, not a field
            fields = next(csv.reader(self._record, strict=True), [])
        except csv.Error as exc:
            if "unexpected end of data" in str(exc):
                if len(self._record) < self.MAX_RECORD_LINES and self._record_bytes <= self.max_line_bytes:
                    return []  # the quoted field goes on in the next line
                return self._resync()
            try:  # other oddities (text after a closing quote, ...): read leniently, as Python does
                fields = next(csv.reader(self._record), [])
            except csv.Error as exc:
                self._record, self._record_bytes = [], 0
                return [self._row(None, error=f"invalid CSV: {exc}")]
        self._record, self._record_bytes = [], 0
        return self._csv_fields(fields)

    def _resync(self) -> list[Row]:
        """A quoted field never closed: its first line is an error row, the lines after it are read afresh."""
        first, *rest = self._record
        self._record, self._record_bytes = [], 0
        rows = [self._row(None, error="a quoted field opens here and never closes")] if self._header is not None \
            else self._csv_fields(next(csv.reader([first]), []))
        for line in rest:
            rows += self._csv_line(line, len(line))
        return rows

    def _csv_fields(self, fields: list[str]) -> list[Row]:
        if self._header is None:
            self._header = fields
            return []
        if not fields:  # a blank line: an empty text in a one-column file, nothing in a wider one
            return [self._row(None, text="")] if self._header == [self.text_column] else []
        record = dict(zip(self._header, fields))
        id_ = record.get(self.id_column or "id")
        if len(fields) != len(self._header):
            return [self._row(id_, error=f"row has {len(fields)} fields; the header has {len(self._header)}")]
        if self.text_column not in record:
            return [self._row(id_, error=f"no column {echo(self.text_column)}; columns are {echo(self._header)}")]
        return [self._row(id_, text=record[self.text_column])]


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
                blanks = [""] * (len(self.labels) * self.probabilities)
                writer.writerow([row.number, row.id, "", "", row.error] + blanks)
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


GZIP_MAGIC = b"\x1f\x8b"


async def maybe_gunzip(chunks: AsyncIterator[bytes], limit: int) -> AsyncIterator[bytes]:
    """The chunks as they are, or decompressed if they are gzip (recognised by its first bytes, however it
    was sent: a .gz upload, Content-Encoding: gzip, a raw body). A megabyte of output at a time, and no more
    than `limit` bytes in all, so a decompression bomb costs bounded memory and bounded work."""
    first = b""
    async for first in chunks:
        if first:
            break
    if not first.startswith(GZIP_MAGIC):
        if first:
            yield first
        async for data in chunks:
            yield data
        return
    inflate, total = zlib.decompressobj(16 + zlib.MAX_WBITS), 0

    async def compressed():
        yield first
        async for data in chunks:
            yield data

    async for data in compressed():
        while data:
            try:
                out = inflate.decompress(data, 1 << 20)
            except zlib.error as exc:
                raise BadRequest(f"the gzip data is corrupt: {exc}") from None
            data = inflate.unconsumed_tail
            if inflate.eof and inflate.unused_data:  # another gzip member follows
                data, inflate = inflate.unused_data + data, zlib.decompressobj(16 + zlib.MAX_WBITS)
            total += len(out)
            if total > limit:
                raise PayloadTooLarge(f"the decompressed upload exceeds the limit of {limit} bytes")
            if out:
                yield out


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
            probs, errors = await classify_each(classify, [r.text for r in ok], len(writer.labels))
            scored = {}
            for row, p, error in zip(ok, probs, errors):
                if error is None:
                    scored[row.number] = p
                else:  # a failed text becomes its error row; nothing is lost
                    row.error = f"inference failed: {error}"
            counts["rows"] += len(block)
            counts["scored"] += len(scored)
            counts["errors"] += len(block) - len(scored)
            yield writer.rows(block, scored)
        if summary:
            yield writer.summary(counts | {"seconds": round(time.perf_counter() - started, 3)})
    finally:
        producer.cancel()
