"""What payload logging and tracing cost, side by side in one run: the default server (both off), payload
logging at its defaults (10% of requests to the JSON Lines file, texts as sha256), tracing at its default
sample (parentbased_traceidratio 0.01) exported over OTLP/HTTP to a receiver in this process, and both on.
Single-text requests (real IMDB reviews) at c=1 and c=64 with wrk; the four servers run side by side and each
round measures them in turn (the median of the rounds is reported, with their spread).

    python bench/observability.py [--model imdb-lstm-tutorial] [--duration 5] [--rounds 3]

Prints a table with each cell's ratio to the default server and writes bench/results/observability.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import ROOT, free_port, machine, reviews, start_server, stop_server  # noqa: E402
from bench.load import lua_script, print_and_save, run_wrk  # noqa: E402
from rnnserve.service.metrics import Metrics  # noqa: E402
from rnnserve.service.observe.payload import PayloadLogger  # noqa: E402
from rnnserve.service.observe.tracing import Tracing  # noqa: E402
from rnnserve.service.runtime.base import BatchTimes  # noqa: E402
from rnnserve.service.runtime.batcher import TRACED, BatchRun  # noqa: E402
from rnnserve.service.settings import Settings  # noqa: E402
from rnnserve.service.v2.dataplane import Prediction  # noqa: E402


class Collector(BaseHTTPRequestHandler):
    """An OTLP/HTTP endpoint that takes every export and keeps only its count and size."""

    exports, received = 0, 0

    def do_POST(self):  # noqa: N802 - http.server's name
        Collector.received += len(self.rfile.read(int(self.headers["content-length"])))
        Collector.exports += 1
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.end_headers()

    def log_message(self, *args):
        pass


def hook_costs(tmp: Path, collector_port: int, n: int = 100_000) -> dict[str, float]:
    """Microseconds per request of each hook, timed in this process at the documented defaults (what a load
    run's spread hides): payload logging's draw and queueing (10%: the thread that writes is not running), and
    a server span at the 1% sampler, unsampled and sampled with its five stage spans (exported meanwhile)."""
    os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = f"http://127.0.0.1:{collector_port}"
    logger = PayloadLogger(Settings(payload_log=True, payload_log_sink=str(tmp / "hooks.jsonl"),
                                    payload_log_queue=n), Metrics())
    event = Prediction("m", None, ["a text"], None, None, "v1", "rid", 0.001)
    started = time.perf_counter()
    for _ in range(n):
        logger.prediction(event)
    costs = {"payload log, per request": (time.perf_counter() - started) / n * 1e6}
    tracing = Tracing.configure(Settings(tracing=True))
    assert tracing is not None
    attributes = {"http.request.method": "POST", "url.path": "/v1/models/m/predict"}
    for name, carrier, count in (("span, unsampled (99%)", {}, n),
                                 ("span, sampled, with its stages", {"traceparent": f"00-{'1' * 32}-{'2' * 16}-01"},
                                  n // 10)):
        started = time.perf_counter()
        for _ in range(count):
            span, token = tracing.start("POST", carrier, attributes)
            traced = TRACED.get()
            if traced is not None:
                now = time.monotonic()
                traced.runs.append((1, now, BatchRun("m/1", 1, now, now, BatchTimes(0, 0, 0), [traced])))
            tracing.end(span, token, {"http.response.status_code": 200})
        costs[name] = (time.perf_counter() - started) / count * 1e6
    tracing.close()
    return costs


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="imdb-lstm-tutorial")
    ap.add_argument("--models-dir", default=str(ROOT / "models"))
    ap.add_argument("--duration", type=int, default=5, help="seconds per scenario and round")
    ap.add_argument("--rounds", type=int, default=3, help="rounds, each running every configuration in turn")
    args = ap.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk is not installed (apt-get install wrk)")
    texts = [t for t in reviews(2000) if 800 <= len(t) <= 1000][:50]
    collector = ThreadingHTTPServer(("127.0.0.1", 0), Collector)
    threading.Thread(target=collector.serve_forever, daemon=True).start()
    report = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "machine": machine(), "model": args.model,
              "duration_s": args.duration, "rounds": args.rounds, "results": {}}
    servers = {}
    with tempfile.TemporaryDirectory() as tmp:
        sink = Path(tmp) / "payloads.jsonl"
        logging_on = {"RNNSERVE_PAYLOAD_LOG": "true", "RNNSERVE_PAYLOAD_LOG_SINK": str(sink)}
        tracing_on = {"RNNSERVE_TRACING": "true",
                      "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{collector.server_port}"}
        configurations = {"off (defaults)": {}, "payload log 10% to the file": logging_on,
                          "tracing 1% to OTLP/HTTP": tracing_on, "both": logging_on | tracing_on}
        script = Path(tmp) / "single.lua"
        script.write_text(lua_script([json.dumps({"text": t}) for t in texts]))
        try:
            # Every configuration's server up at once, and each round runs them in turn: the machine's drift
            # over the run (other work, heat) falls on every configuration alike.
            for name, env in configurations.items():
                port = free_port()
                cmd = [sys.executable, "-m", "rnnserve.service", "--models-dir", args.models_dir, "--no-access-log",
                       "--log-level", "warning", "--grpc-port", "0", "--port", str(port)]
                servers[name] = (start_server(cmd, port, env={**os.environ, **env}),
                                 f"http://127.0.0.1:{port}/v1/models/{args.model}/predict")
            for _, url in servers.values():
                run_wrk(url, script, 8, 2)  # warm-up
            runs: dict[tuple[str, int], list[dict]] = {}
            for _ in range(args.rounds):
                for c in (1, 64):
                    for name, (_, url) in servers.items():
                        runs.setdefault((name, c), []).append(run_wrk(url, script, c, args.duration))
        finally:
            for proc, _ in servers.values():
                stop_server(proc)
        events = sum(1 for _ in sink.open()) if sink.exists() else 0
        report["hooks_us"] = hook_costs(Path(tmp), collector.server_port)
    for (name, c), results in runs.items():
        rps = sorted(r["requests_per_s"] for r in results)
        report["results"].setdefault(name, []).append({
            "scenario": f"single text, c={c}", "requests_per_s": statistics.median(rps),
            "spread": (rps[-1] - rps[0]) / statistics.median(rps),
            "p50_ms": statistics.median(r["p50_ms"] for r in results),
            "p99_ms": statistics.median(r["p99_ms"] for r in results),
            "errors": sum(r["errors"] for r in results), "rounds": results})
    off = {r["scenario"]: r["requests_per_s"] for r in report["results"]["off (defaults)"]}
    for rows in report["results"].values():
        for r in rows:
            r["vs_off"] = r["requests_per_s"] / off[r["scenario"]]
    report["payload_events"], report["otlp_exports"] = events, Collector.exports
    print(f"{report['machine']}, model {args.model}, median of {args.rounds} rounds of {args.duration}s per "
          f"scenario; {events} payload events written, {Collector.exports} OTLP exports ({Collector.received} "
          "bytes) received")
    print_and_save(report, "configuration", "vs_off", "vs off (median)", "observability.json")
    for name, rows in report["results"].items():
        print(f"  spread over rounds, {name}: " + ", ".join(f"{r['scenario']} {r['spread']:.0%}" for r in rows))
    print("per-request cost of each hook, timed in-process: " + ", ".join(
        f"{name} {us:.1f} us" for name, us in report["hooks_us"].items()))
    collector.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
