"""The file reader (rnnserve.service.core.rows.RowReader) against what a user would write: Python's
csv.DictReader over the decoded file. Raw IMDB training reviews (25,000 rows, 33 MB), as written (CRLF) and
converted to LF, fed in 64 KiB chunks as the scorer gets them; best of --repeat runs.

    python bench/reader.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import csv
import gzip
import io
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import DATA_DIR, machine  # noqa: E402
from rnnserve.service.core.rows import RowReader  # noqa: E402


def row_reader(data: bytes) -> int:
    reader, rows = RowReader("csv", "review", None, 100_000), 0
    for i in range(0, len(data), 1 << 16):
        rows += len(reader.feed(data[i:i + (1 << 16)]))
    return rows + len(reader.close())


def dict_reader(data: bytes) -> int:
    return sum(1 for _ in csv.DictReader(io.TextIOWrapper(io.BytesIO(data), encoding="utf-8", newline="")))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    raw = gzip.decompress((DATA_DIR / "raw" / "imdb_train.csv.gz").read_bytes())
    print(f"{machine()}\n\n| reader | line endings | rows | MB/s | rows/s |\n|---|---|--:|--:|--:|")
    for name, read in (("csv.DictReader", dict_reader), ("RowReader", row_reader)):
        for endings, data in (("CRLF", raw), ("LF", raw.replace(b"\r\n", b"\n"))):
            best = float("inf")
            for _ in range(args.repeat):
                started = time.perf_counter()
                rows = read(data)
                best = min(best, time.perf_counter() - started)
            print(f"| {name} | {endings} | {rows:,} | {len(data) / best / 1e6:.0f} | {rows / best:,.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
