"""File-scoring benchmark: texts/s end to end for the endpoint (the default server) and the CLI on the 25,000
raw IMDB training reviews as JSON Lines, beside onnxruntime's own rate on the same texts (the package's
tokenizer, then the session alone, in runs of max_batch_size on the machine's CPUs: the limit the endpoint
approaches), and the server's peak RSS while it scores a generated 1,000,000-row upload.

    python bench/score.py [--model imdb-lstm-tutorial] [--models-dir models] [--rows 1000000]

Prints a table and writes bench/results/score.json.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import io
import json
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import DATA_DIR, ROOT, free_port, machine, reviews, rss_mb, server_pids, start_server, stop_server  # noqa: E402


def stream_score(url: str, body, content_type: str) -> tuple[int, float]:
    rows, started = 0, time.perf_counter()
    with httpx.Client(timeout=httpx.Timeout(60, read=None)) as client:
        with client.stream("POST", url, content=body, headers={"content-type": content_type},
                           params={"text_column": "review"}) as r:
            r.raise_for_status()
            for line in r.iter_lines():
                rows += not line.startswith('{"summary"')
    return rows, time.perf_counter() - started


def chunks(data: bytes, size: int = 1 << 20):
    for i in range(0, len(data), size):
        yield data[i:i + size]


def generated_rows(n: int, texts: list[str]):
    """n JSON Lines rows cycling through real reviews, produced on the fly (never held in memory)."""
    lines = [json.dumps({"id": i, "review": t}).encode() + b"\n" for i, t in enumerate(texts)]
    batch = []
    for i in range(n):
        batch.append(lines[i % len(lines)])
        if len(batch) == 1000:
            yield b"".join(batch)
            batch = []
    if batch:
        yield b"".join(batch)


def onnxruntime_alone(package: Path, texts: list[str]) -> tuple[int, float]:
    """The package's tokenizer (compiled) and onnxruntime on every CPU this process may use, in runs of the
    server's max_batch_size: what the endpoint would reach with no server at all."""
    from rnnserve import RuntimeOptions, TextClassifier

    with TextClassifier.open(package, RuntimeOptions(warmup=True)) as model:
        started = time.perf_counter()
        model.predict_batch(texts)
        return len(texts), time.perf_counter() - started


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="imdb-lstm-tutorial")
    ap.add_argument("--models-dir", default=str(ROOT / "models"))
    ap.add_argument("--rows", type=int, default=1_000_000, help="rows of the generated file for the RSS run")
    args = ap.parse_args()
    raw = DATA_DIR / "raw" / "imdb_train.csv.gz"
    csv_bytes = gzip.decompress(raw.read_bytes())
    texts = [row["review"] for row in csv.DictReader(io.StringIO(csv_bytes.decode("utf-8")))]
    jsonl = "".join(json.dumps({"review": t}) + "\n" for t in texts).encode()
    package = max((Path(args.models_dir) / args.model).iterdir(), key=lambda p: int(p.name))
    port = free_port()
    proc = start_server([sys.executable, "-m", "rnnserve.service", "--models-dir", args.models_dir, "--port", str(port),
                         "--no-access-log", "--log-level", "warning"], port)
    url = f"http://127.0.0.1:{port}/v1/models/{args.model}/score"
    results = {}
    try:
        stream_score(url, chunks(jsonl[:2_000_000]), "application/x-ndjson")  # warm-up
        for run in (1, 2):
            rows, seconds = stream_score(url, chunks(jsonl), "application/x-ndjson")
            results[f"endpoint, 25,000 reviews, JSON Lines, run {run}"] = {"rows": rows, "seconds": seconds,
                                                                           "texts_per_s": rows / seconds}
        pids = server_pids(proc.pid)
        rss_before = sum(rss_mb(p) for p in pids)
        rows, seconds = stream_score(url, generated_rows(args.rows, reviews(5000)), "application/x-ndjson")
        results[f"endpoint, generated {args.rows:,} rows"] = {
            "rows": rows, "seconds": seconds, "texts_per_s": rows / seconds,
            "server_rss_before_mb": rss_before, "server_peak_rss_mb": sum(rss_mb(p, "VmHWM") for p in pids),
            "largest_process_peak_mb": max(rss_mb(p, "VmHWM") for p in pids), "processes": len(pids)}
    finally:
        stop_server(proc)
    rows, seconds = onnxruntime_alone(package, texts)
    results["onnxruntime alone (tokenizer + session), 25,000 reviews"] = {"rows": rows, "seconds": seconds,
                                                                         "texts_per_s": rows / seconds}
    out = Path("/tmp/rnnserve-bench-scores.jsonl")
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "rnnserve.service.scoring.cli", str(raw), "--package", str(package),
                    "--text-column", "review", "-o", str(out)], check=True, cwd=ROOT, stderr=subprocess.DEVNULL)
    seconds = time.perf_counter() - started
    rows = sum(1 for _ in out.open())
    results["CLI (local, process start included), 25,000 reviews"] = {"rows": rows, "seconds": seconds,
                                                                       "texts_per_s": rows / seconds}
    report = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "machine": machine(),
              "model": args.model, "results": results}
    for name, r in results.items():
        extra = f", server peak RSS {r['server_peak_rss_mb']:.0f} MB over {r['processes']} processes (before " \
                f"{r['server_rss_before_mb']:.0f} MB; largest process {r['largest_process_peak_mb']:.0f} MB)" \
            if "server_peak_rss_mb" in r else ""
        print(f"{name:55} {r['rows']:>9,} rows {r['seconds']:7.1f} s {r['texts_per_s']:9.0f} texts/s{extra}")
    (ROOT / "bench" / "results").mkdir(exist_ok=True)
    (ROOT / "bench" / "results" / "score.json").write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
