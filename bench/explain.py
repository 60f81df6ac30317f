"""What an explanation costs: milliseconds per /explain computation (the runtime, in-process) against one
prediction of the same text, for raw IMDB reviews of median length and long ones, occlusion and window.

    python bench/explain.py [--models imdb-lstm-small,imdb-gru-ensemble,imdb-simple-rnn] [--texts 20]

Writes bench/results/explain.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import ROOT, machine, reviews  # noqa: E402
from rnnserve.service.runtime.text import TextClassifier  # noqa: E402


async def median_ms(call, texts: list[str]) -> float:
    times = []
    for text in texts:
        started = time.perf_counter()
        await call(text)
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


async def measure(clf: TextClassifier, texts: list[str]) -> dict:
    await clf.explain(texts[0])  # warm
    words = statistics.median(len(clf.tokenizer.word_spans(t)) for t in texts)
    return {"words": words,
            "predict_ms": await median_ms(lambda t: clf.predict([t]), texts),
            "occlusion_ms": await median_ms(clf.explain, texts),
            "window5_ms": await median_ms(lambda t: clf.explain(t, method="window", window=5), texts)}


async def run_all(names: list[str], sets: dict[str, list[str]]) -> list[dict]:
    rows = []
    for name in names:
        clf = TextClassifier.open(ROOT / "models" / name / "1")
        for label, texts in sets.items():
            r = {"model": name, "texts": label, **await measure(clf, texts)}
            rows.append(r)
            print(f"{name:16} {label:22} {r['words']:6.0f} {r['predict_ms']:8.2f} {r['occlusion_ms']:10.1f} "
                  f"{r['window5_ms']:9.1f}", flush=True)
        await clf.close()
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="imdb-lstm-small,imdb-gru-ensemble,imdb-simple-rnn")
    ap.add_argument("--texts", type=int, default=20)
    args = ap.parse_args()
    pool = reviews(2000)
    by_length = sorted(pool, key=len)
    middle = len(by_length) // 2
    sets = {"median review": by_length[middle - args.texts // 2: middle + args.texts // 2],
            "long review (top 1%)": by_length[-args.texts:]}
    print(f"{machine()}; median of {args.texts} raw IMDB reviews each; milliseconds per text")
    print(f"{'model':16} {'texts':22} {'words':>6} {'predict':>8} {'occlusion':>10} {'window=5':>9}")
    rows = asyncio.run(run_all(args.models.split(","), sets))
    report = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "machine": machine(),
              "results": rows}
    (ROOT / "bench" / "results").mkdir(exist_ok=True)
    (ROOT / "bench" / "results" / "explain.json").write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
