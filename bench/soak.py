"""Soak: single-text requests at about 80% of the measured maximum rate, for a bounded time; reports
errors and the server's RSS at start and end.

    python bench/soak.py [--model imdb-lstm-tutorial] [--minutes 10] [--fraction 0.8]

Needs wrk. The rate is held with wrk's per-request delay over 64 connections. Writes bench/results/soak.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import ROOT, free_port, machine, reviews, rss_mb, server_pids, start_server, stop_server  # noqa: E402
from bench.load import lua_script, run_wrk  # noqa: E402

DELAY = """
delay_ms = %f
delay = function()
  return delay_ms
end
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="imdb-lstm-tutorial")
    ap.add_argument("--models-dir", default=str(ROOT / "models"))
    ap.add_argument("--minutes", type=float, default=10)
    ap.add_argument("--fraction", type=float, default=0.8)
    args = ap.parse_args()
    texts = reviews(500)
    port = free_port()
    proc = start_server([sys.executable, "-m", "rnnserve.service", "--models-dir", args.models_dir, "--port", str(port),
                         "--no-access-log", "--log-level", "warning"], port)
    url = f"http://127.0.0.1:{port}/v1/models/{args.model}/predict"
    try:
        with tempfile.TemporaryDirectory() as tmp:
            script = Path(tmp) / "single.lua"
            body = lua_script([json.dumps({"text": t}) for t in texts])
            script.write_text(body)
            peak = run_wrk(url, script, 64, 15)
            target = peak["requests_per_s"] * args.fraction
            # 64 connections each wait `delay` after every answer: rate ~= 64 / (latency + delay)
            delay_ms = max(0.0, 64 / target * 1000 - (peak["p50_ms"] or 0))
            script.write_text(body + DELAY % delay_ms)
            rss_start = sum(rss_mb(p) for p in server_pids(proc.pid))
            soak = run_wrk(url, script, 64, int(args.minutes * 60))
            rss_end = sum(rss_mb(p) for p in server_pids(proc.pid))
    finally:
        stop_server(proc)
    report = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "machine": machine(),
              "model": args.model, "minutes": args.minutes, "max_requests_per_s": peak["requests_per_s"],
              "target_requests_per_s": target, "achieved_requests_per_s": soak["requests_per_s"],
              "p50_ms": soak["p50_ms"], "p99_ms": soak["p99_ms"], "errors": soak["errors"],
              "rss_start_mb": rss_start, "rss_end_mb": rss_end,
              "rss_growth_pct": 100 * (rss_end - rss_start) / rss_start}
    for k, v in report.items():
        print(f"{k:26} {v:.2f}" if isinstance(v, float) else f"{k:26} {v}")
    (ROOT / "bench" / "results").mkdir(exist_ok=True)
    (ROOT / "bench" / "results" / "soak.json").write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
