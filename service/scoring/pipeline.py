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
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Literal, cast

import numpy as np
import orjson

from rnnserve.service.core.errors import BadRequest, PayloadTooLarge
from rnnserve.service.core.rows import InputFormat, Row, RowReader
from rnnserve.service.runtime.text import Classify, classify_each

OutputFormat = Literal["jsonl", "csv"]
BLOCK_ROWS = 512


@dataclass(frozen=True, kw_only=True)
class ScoreOptions:
    """How a file's rows are read and its scored rows written: the endpoint's query, rnnserve-score's flags and
    Ray Data's score_files take these same options."""

    input_format: str | None = None  # csv, jsonl, text (Ray: parquet too); None: from the file name/Content-Type
    text_column: str = "text"  # the CSV column or JSON field holding the text
    id_column: str | None = None  # the row id's column or field; None: "id" where there is one
    encoding: str | None = None  # the input's charset (a Python codec); None: UTF-8, or UTF-16 after its BOM
    output_format: str | None = None  # jsonl, csv (Ray: parquet too); None: jsonl, or what the client accepts
    probabilities: bool = False  # add every label's probability to each row

    def reader(self, fmt: str, max_chars: int | None) -> RowReader:
        """fmt: csv, jsonl or text (the callers' choice, checked where it was made)."""
        return RowReader(cast(InputFormat, fmt), self.text_column, self.id_column, max_chars, encoding=self.encoding)

    def writer(self, labels: list[str]) -> RowWriter:
        """JSON Lines or CSV rows (Parquet is Ray Data's to write)."""
        return RowWriter("csv" if self.output_format == "csv" else "jsonl", labels, self.probabilities)


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
    async for data in chunks:  # the magic's two bytes may come in two chunks
        first += data
        if len(first) >= len(GZIP_MAGIC):
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
            if getter not in done and (failure := producer.exception()) is not None:  # reading the body failed
                getter.cancel()
                raise failure
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
