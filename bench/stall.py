"""Does one maximum-size request stall the others? While maximum-size predict requests (256 texts x 30,000
characters of real reviews, 7.7 MB) run one after another, a separate process probes /health/live every
5 ms; prints the probes' latencies during the big requests. The server runs one worker, the worst case.

    python bench/stall.py [--model imdb-lstm-tutorial] [--requests 10]

Target: no probe waits longer than 20 ms. Writes bench/results/stall.json.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import ROOT, free_port, machine, reviews, start_server, stop_server  # noqa: E402


def probe(url: str, stop, out) -> None:
    samples = []
    with httpx.Client(timeout=10) as client:
        while not stop.is_set():
            started = time.time()
            client.get(url).raise_for_status()
            samples.append((started, time.time() - started))
            time.sleep(0.005)
    out.put(samples)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="imdb-lstm-tutorial")
    ap.add_argument("--models-dir", default=str(ROOT / "models"))
    ap.add_argument("--requests", type=int, default=10)
    args = ap.parse_args()
    text = (" ".join(reviews(100)) * 3)[:30_000]
    body = json.dumps({"texts": [text[i:] + text[:i] for i in range(256)]}).encode()
    port = free_port()
    # One worker, so the probes and the big requests share one event loop (with more, they may not meet).
    proc = start_server([sys.executable, "-m", "rnnserve.service", "--models-dir", args.models_dir, "--port", str(port),
                         "--workers", "1", "--no-access-log", "--log-level", "warning"], port)
    base = f"http://127.0.0.1:{port}"
    spans = []
    try:
        stop, out = multiprocessing.Event(), multiprocessing.Queue()
        prober = multiprocessing.Process(target=probe, args=(f"{base}/health/live", stop, out))
        prober.start()
        time.sleep(0.5)
        with httpx.Client(timeout=120) as client:
            for _ in range(args.requests):
                started = time.time()
                r = client.post(f"{base}/v1/models/{args.model}/predict", content=body,
                                headers={"content-type": "application/json"})
                r.raise_for_status()
                spans.append((started, time.time()))
        stop.set()
        samples = out.get(timeout=30)
        prober.join()
    finally:
        stop_server(proc)
    during = sorted(ms * 1000 for t, ms in samples if any(a <= t <= b for a, b in spans))
    report = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "machine": machine(),
              "model": args.model, "body_bytes": len(body), "big_requests": len(spans),
              "big_request_ms_median": statistics.median((b - a) * 1000 for a, b in spans),
              "probes_during": len(during), "probe_p50_ms": statistics.median(during),
              "probe_p99_ms": during[min(len(during) - 1, int(len(during) * 0.99))], "probe_max_ms": during[-1]}
    print(f"{report['machine']}, model {args.model}: {len(spans)} predicts of {len(body) / 1e6:.1f} MB "
          f"(median {report['big_request_ms_median']:.0f} ms each); {len(during)} liveness probes during them: "
          f"p50 {report['probe_p50_ms']:.1f} ms, p99 {report['probe_p99_ms']:.1f} ms, "
          f"max {report['probe_max_ms']:.1f} ms")
    (ROOT / "bench" / "results").mkdir(exist_ok=True)
    (ROOT / "bench" / "results" / "stall.json").write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
