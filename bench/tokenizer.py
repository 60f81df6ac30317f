"""Tokenizer speed: the pure-Python reference against the compiled tokenizer, single-threaded, on 5,000 raw
IMDB training reviews with the bundled imdb-lstm-small package's spec (ids padded into the int64 matrix, as served).

    python bench/tokenizer.py [--package models/imdb-lstm-small/1] [--reviews 5000]

Target: <= 10 us per review for the compiled one. Writes bench/results/tokenizer.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import ROOT, machine, reviews  # noqa: E402
from rnnserve.service.core.package import read_package  # noqa: E402
from rnnserve.service.core.tokenizer import Tokenizer  # noqa: E402


def us_per_text(tok: Tokenizer, texts: list[str], batch: int, repeat: int = 3) -> float:
    runs = []
    for _ in range(repeat):
        started = time.perf_counter()
        for i in range(0, len(texts), batch):
            tok(texts[i:i + batch])
        runs.append((time.perf_counter() - started) / len(texts) * 1e6)
    return statistics.median(runs)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--package", default=str(ROOT / "models" / "imdb-lstm-small" / "1"))
    ap.add_argument("--reviews", type=int, default=5000)
    args = ap.parse_args()
    spec = read_package(args.package).tokenizer
    texts = reviews(args.reviews)
    compiled, reference = Tokenizer(spec), Tokenizer(spec, fast=False)
    if compiled.implementation != "c":
        sys.exit("the compiled tokenizer is not built (pip install -e . with a C compiler present)")
    rows = []
    for batch in (1, 64, 512):
        ref, fast = us_per_text(reference, texts, batch), us_per_text(compiled, texts, batch)
        rows.append({"batch": batch, "reference_us": ref, "compiled_us": fast, "speedup": ref / fast})
    chars = sum(map(len, texts)) / len(texts)
    print(f"{machine()}; {len(texts)} reviews, {chars:.0f} characters on average; microseconds per review")
    print(f"{'batch':>6} {'reference':>10} {'compiled':>9} {'speed-up':>9}")
    for r in rows:
        print(f"{r['batch']:6d} {r['reference_us']:10.1f} {r['compiled_us']:9.1f} {r['speedup']:8.1f}x")
    report = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "machine": machine(),
              "package": args.package, "reviews": len(texts), "mean_chars": chars, "results": rows}
    (ROOT / "bench" / "results").mkdir(exist_ok=True)
    (ROOT / "bench" / "results" / "tokenizer.json").write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
