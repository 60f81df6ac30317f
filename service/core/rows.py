"""Reading the files people send: CSV, JSON Lines and plain text into rows, as their bytes arrive.

One reader for the scorer (HTTP, command line, Ray Data) and for training (texts and labels, language-model
corpora), so every file is read the same way:

- Encoding: UTF-8, a byte-order mark skipped; UTF-16 when it starts with its BOM; or a declared charset (any
  of Python's codecs: `codec_for`). Bytes the encoding cannot read make that row an error row.
- Line endings: LF, CRLF, a lone CR, and a CR doubled before LF (`\\r\\r\\n`, a CRLF file converted once more)
  each end one line, mixed as they come; none is left on a text.
- CSV as Python's `csv` reads it (the default dialect, non-strict): a quoted field may hold any number of line
  breaks, kept as written, and is bounded by bytes (`max_line_bytes`), not by lines.
- Every input row becomes exactly one row, in order: an error row (with the reason) where it cannot be read.
"""

from __future__ import annotations

import codecs
import csv
import gzip
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import orjson

from rnnserve.service.core.errors import BadRequest, UnsupportedMediaType, echo

InputFormat = Literal["csv", "jsonl", "text"]
SUFFIX_FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".txt": "text"}
CHUNK = 1 << 20
QUOTED_TEXT = re.compile(r'[^"]*+(?:""[^"]*+)*+')  # inside a quoted field: anything but a lone quote


def format_of(name: str, formats: dict[str, str] = SUFFIX_FORMATS) -> str | None:
    """A file's input format from its name (a .gz suffix looked through), or None."""
    base = name.removesuffix(".gz")
    return next((fmt for suffix, fmt in formats.items() if base.endswith(suffix)), None)


def codec_for(charset: str | None) -> str | None:
    """A declared charset (e.g. Content-Type's `charset=`) as a Python codec name; None for none declared.
    Raises UnsupportedMediaType (415) for a charset Python's codecs do not know."""
    if charset is None or not charset.strip():
        return None
    try:
        info = codecs.lookup(charset.strip().strip('"'))
    except LookupError:
        info = None
    # text encodings only: rot13, base64, zlib and the like are codecs, not charsets
    if info is None or not info._is_text_encoding or info.name in ("undefined", "punycode", "idna"):
        raise UnsupportedMediaType(f"charset {echo(charset)} is unknown; files are read as UTF-8 (UTF-16 with a "
                                   "byte-order mark) or in a charset of Python's codecs")
    return info.name


@dataclass
class Row:
    number: int  # 1-based data row (a CSV header not counted)
    id: str | None  # the row's own id as text; None where it has none
    text: str | None = None
    error: str | None = None
    label: str | None = None  # training files: the label column's value


class RowReader:
    """Bytes in, complete rows out (`feed`, then `close`): linear time and bounded memory whatever the input.
    A line is given up (one error row) once it passes `max_line_bytes`; a quoted CSV field still open past
    `max_line_bytes` (or at the end) makes its record's first line an error row, and the lines after it are
    read afresh."""

    def __init__(self, fmt: InputFormat, text_column: str = "text", id_column: str | None = None,
                 max_chars: int | None = None, label_column: str | None = None, encoding: str | None = None):
        self.fmt, self.text_column, self.max_chars, self.label_column = fmt, text_column, max_chars, label_column
        self.id_column = id_column or "id"
        # Room for a maximum-size text in UTF-8 plus the other CSV columns or JSON fields.
        self.max_line_bytes = (max_chars or 1_000_000) * 4 + 65_536
        csv.field_size_limit(max(csv.field_size_limit(), self.max_line_bytes))  # fields as long as the limits
        self._encoding = encoding  # None: UTF-8, or UTF-16 if the data starts with its BOM
        self._parts: list[bytes] = []  # the current line so far (not joined until it ends)
        self._size = 0
        self._cr = b""  # a chunk's trailing CRs: the next chunk may go on with LF
        self._skipping = False  # inside a line that was given up: drop bytes until it ends
        self._started = False
        self._head = b""  # the first bytes, until there are enough to tell a byte-order mark
        # an incremental decoder for encodings that are not ASCII-compatible
        self._decoder: codecs.IncrementalDecoder | None = None
        self._record: list[str] = []  # a CSV record whose quoted field is still open: its lines, breaks kept
        self._record_bytes = 0
        self._header: list[str] | None = None
        self._count = 0

    @property
    def rows_read(self) -> int:
        return self._count

    def feed(self, data: bytes) -> list[Row]:
        if not self._started:  # a byte-order mark may come split over chunks: decide on its first 4 bytes
            self._head += data
            if len(self._head) < 4:
                return []
            data, self._head = self._head, b""
        return self._lines(self._transcode(data))

    def _lines(self, data: bytes) -> list[Row]:
        data = self._cr + data
        stripped = data.rstrip(b"\r")
        self._cr, data = data[len(stripped):], stripped
        if not data:
            return []
        pieces = _split_lines(data)
        rows: list[Row] = []
        for i in range(0, len(pieces) - 1, 2):  # (line, its ending) pairs, then the unfinished tail
            rows += self._end_line(pieces[i], pieces[i + 1])
        self._add(pieces[-1], rows)
        return rows

    def close(self) -> list[Row]:
        rows = self._feed_head() if not self._started else []
        if self._decoder is not None:  # bytes the decoder still holds: an incomplete last character
            rows += self._lines(self._decode_stream(b"", final=True))
        held, self._cr = self._cr, b""
        for _ in held:  # a lone CR at the end ends a line, each one more an empty line, as within the file
            rows += self._end_line(b"", b"\r")
        if not held and (self._size or self._skipping):
            rows += self._end_line(b"", b"\n")
        if self._record:  # a quoted field open at the end of the file
            rows += self._resync()
        return rows

    def _add(self, piece: bytes, rows: list[Row]) -> None:
        """Part of a line whose end has not come yet."""
        if self._skipping or not piece:
            return
        self._parts.append(piece)
        self._size += len(piece)
        if self._size > self.max_line_bytes:
            rows += self._too_long()
            self._skipping = True

    def _end_line(self, piece: bytes, ending: bytes) -> list[Row]:
        if self._skipping:
            self._skipping = False
            return []
        if self._size + len(piece) > self.max_line_bytes:
            return self._too_long()
        line = b"".join(self._parts) + piece if self._parts else piece
        self._parts, self._size = [], 0
        return self._line(line, ending)

    def _feed_head(self) -> list[Row]:
        """The file ended within its first 4 bytes: read them now."""
        data, self._head = self._head, b""
        return self._lines(self._transcode(data)) if data else []

    def _transcode(self, data: bytes) -> bytes:
        if not self._started and data:
            self._started = True
            if self._encoding is None and data[:2] in (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE):
                self._encoding = "utf-16"
            elif self._encoding in (None, "utf-8") and data.startswith(codecs.BOM_UTF8):
                data = data[len(codecs.BOM_UTF8):]
            if self._encoding is not None and not _ascii_compatible(self._encoding):
                self._decoder = codecs.getincrementaldecoder(self._encoding)(errors="replace")
        if self._decoder is not None:  # UTF-16 and the like: to UTF-8 first, so lines split on bytes
            return self._decode_stream(data)
        return data

    def _decode_stream(self, data: bytes, final: bool = False) -> bytes:
        assert self._decoder is not None
        try:
            return self._decoder.decode(data, final).encode("utf-8", "surrogatepass")
        except (UnicodeError, ValueError) as exc:  # e.g. UTF-16 declared, and no BOM nor even length
            raise BadRequest(f"the upload cannot be read as {self._encoding}: {exc}") from None

    def _decode(self, raw: bytes) -> str:
        if self._decoder is not None or self._encoding is None:
            return raw.decode("utf-8")
        try:
            return raw.decode(self._encoding)
        except (UnicodeError, ValueError) as exc:  # a codec's own errors besides UnicodeDecodeError
            raise UnicodeDecodeError(self._encoding, raw, 0, len(raw), str(exc)) from None

    def _too_long(self) -> list[Row]:
        """The line passed the size limit: one error row for it (and for a CSV record it was part of)."""
        self._parts, self._size = [], 0
        self._record, self._record_bytes = [], 0
        return [self._row(None, error=f"line longer than {self.max_line_bytes} bytes")]

    def _row(self, id_, text=None, error=None, label=None) -> Row:
        self._count += 1
        if text is not None and self.max_chars is not None and len(text) > self.max_chars:
            text, error = None, f"text has {len(text)} characters; the limit is {self.max_chars}"
        id_ = None if id_ is None or isinstance(id_, bool) else str(id_) if isinstance(id_, (str, int)) else None
        return Row(self._count, id_, text, error, label)

    def _line(self, raw: bytes, ending: bytes) -> list[Row]:
        try:
            line = self._decode(raw)
        except UnicodeDecodeError:
            self._record, self._record_bytes = [], 0
            if self.fmt == "csv" and self._header is None:
                self._header = []  # an unreadable header: every row will say what is missing
                return []
            return [self._row(None, error=f"invalid {self._encoding or 'UTF-8'}")]
        if self.fmt == "csv":
            return self._csv_line(line, ending.decode("ascii"), len(raw) + len(ending))
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
        return [self._fields(obj, lambda column: f"no string field {echo(column)}")]

    def _csv_line(self, line: str, ending: str, size: int) -> list[Row]:
        quoted = _still_quoted(line, bool(self._record))
        if quoted:
            self._record.append(line + ending)
            self._record_bytes += size
            return self._resync() if self._record_bytes > self.max_line_bytes else []
        record = "".join(self._record) + line if self._record else line
        self._record, self._record_bytes = [], 0
        try:
            fields = next(csv.reader([record]), [])
        except csv.Error as exc:
            return [self._row(None, error=f"invalid CSV: {exc}")]
        return self._csv_fields(fields)

    def _resync(self) -> list[Row]:
        """A quoted field never closed: its first line is an error row, the lines after it are read afresh."""
        first, *rest = self._record
        self._record, self._record_bytes = [], 0
        if self._header is None:  # the header itself: read its first line as it stands
            rows = self._csv_fields(next(csv.reader([first.rstrip("\r\n")]), []))
        else:
            rows = [self._row(None, error="a quoted field opens here and never closes")]
        for line in rest:
            body = line.rstrip("\r\n")
            rows += self._csv_line(body, line[len(body):], len(line))
        return rows

    def _csv_fields(self, fields: list[str]) -> list[Row]:
        if self._header is None:
            self._header = fields
            return []
        if not fields:  # a blank line: an empty text in a one-column file, nothing in a wider one
            return [self._row(None, text="")] if self._header == [self.text_column] else []
        record = dict(zip(self._header, fields))
        if len(fields) != len(self._header):
            return [self._row(record.get(self.id_column),
                              error=f"row has {len(fields)} fields; the header has {len(self._header)}")]
        return [self._fields(record, lambda column: f"no column {echo(column)}; columns are {echo(self._header)}")]

    def _fields(self, record: dict, missing) -> Row:
        id_, text = record.get(self.id_column), record.get(self.text_column)
        if not isinstance(text, str):
            return self._row(id_, error=missing(self.text_column))
        if self.label_column is None:
            return self._row(id_, text=text)
        label = record.get(self.label_column)
        if isinstance(label, (int, float)) and not isinstance(label, bool):
            label = str(label)
        if not isinstance(label, str) or not label.strip():
            return self._row(id_, error=missing(self.label_column) if label is None else
                             f"empty or non-text label in {echo(self.label_column)}")
        return self._row(id_, text=text, label=label)


def read_file(path: str | Path, fmt: InputFormat, text_column: str = "text", label_column: str | None = None,
              encoding: str | None = None) -> Iterator[Row]:
    """Every row of a file (gzip recognised by its first bytes), read by RowReader a megabyte at a time."""
    with open(path, "rb") as raw:
        gzipped = raw.read(2) == b"\x1f\x8b"
    reader = RowReader(fmt, text_column, max_chars=None, label_column=label_column, encoding=encoding)
    with (gzip.open if gzipped else open)(path, "rb") as fh:
        while data := fh.read(CHUNK):
            yield from reader.feed(data)
    yield from reader.close()


def _split_lines(data: bytes) -> list[bytes]:
    """[line, its ending, line, its ending, ..., the unfinished tail], endings as the module says (LF, CRLF,
    CR CR LF, a lone CR). bytes.split at C speed, the rare CRs looked at per line: 5x faster than a regular
    expression's split. `data` ends in no CR (feed holds those back)."""
    lines = data.split(b"\n")
    if b"\r" not in data:
        out = [b"\n"] * (2 * len(lines) - 1)
        out[::2] = lines
        return out
    out = []
    for k, piece in enumerate(lines):
        ending = [] if k == len(lines) - 1 else [b"\n"]
        if b"\r" in piece:
            body = piece.rstrip(b"\r")
            if ending:
                ending = [piece[len(body):] + b"\n"]  # CRLF, CR CR LF: one ending
            *lone, piece = body.split(b"\r")  # CRs inside: each ends a line of its own
            for line in lone:
                out += [line, b"\r"]
        out += [piece, *ending]
    return out


def _ascii_compatible(encoding: str) -> bool:
    """Whether lines can be split on the bytes of CR and LF before decoding (UTF-8, Latin-1, the Windows code
    pages; not UTF-16 or UTF-32)."""
    try:
        return '\r\n,"'.encode(encoding) == b'\r\n,"' and "\n".encode(encoding) == b"\n"
    except (UnicodeError, LookupError):
        return False


def _still_quoted(line: str, quoted: bool) -> bool:
    """Whether a quoted field is open at the end of `line`, given whether one was open at its start, as
    Python's csv reads it (default dialect, non-strict): a field that starts with a quote is quoted, `""`
    inside it is one quote, and any other quote is a character."""
    if '"' not in line:
        return quoted
    i = 0
    while True:
        if quoted:
            inside = QUOTED_TEXT.match(line, i)
            assert inside is not None  # it matches the empty string too
            i = inside.end()
            if i == len(line):
                return True
            quoted, i = False, i + 1  # a lone quote closes the field
        elif line.startswith('"', i):  # a field's first character
            quoted, i = True, i + 1
            continue
        j = line.find(",", i)  # unquoted text, or text after a closing quote, runs to the next delimiter
        if j < 0:
            return False
        i = j + 1
