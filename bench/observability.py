"""What payload logging and tracing cost, side by side in one run: the default server (both off), payload
logging at its defaults (10% of requests to the JSON Lines file, texts as sha256), tracing at its default
sample (parentbased_traceidratio 0.01) exported over OTLP/HTTP to a receiver in this process, both on, and the
default server again (the machine's spread). Single-text requests (real IMDB reviews) at c=1 and c=64 with wrk.

    python bench/observability.py [--model imdb-lstm-tutorial] [--duration 8]

Prints a table with each cell's ratio to the first default run and writes bench/results/observability.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import ROOT, free_port, machine, reviews, start_server, stop_server  # noqa: E402
from bench.load import lua_script, print_and_save, run_wrk  # noqa: E402


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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="imdb-lstm-tutorial")
    ap.add_argument("--models-dir", default=str(ROOT / "models"))
    ap.add_argument("--duration", type=int, default=8, help="seconds per scenario")
    args = ap.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk is not installed (apt-get install wrk)")
    texts = [t for t in reviews(2000) if 800 <= len(t) <= 1000][:50]
    collector = ThreadingHTTPServer(("127.0.0.1", 0), Collector)
    threading.Thread(target=collector.serve_forever, daemon=True).start()
    report = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "machine": machine(), "model": args.model,
              "duration_s": args.duration, "results": {}}
    with tempfile.TemporaryDirectory() as tmp:
        sink = Path(tmp) / "payloads.jsonl"
        logging_on = {"RNNSERVE_PAYLOAD_LOG": "true", "RNNSERVE_PAYLOAD_LOG_SINK": str(sink)}
        tracing_on = {"RNNSERVE_TRACING": "true",
                      "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{collector.server_port}"}
        configurations = {"off (defaults)": {}, "payload log 10% to the file": logging_on,
                          "tracing 1% to OTLP/HTTP": tracing_on, "both": logging_on | tracing_on,
                          "off again (spread)": {}}
        script = Path(tmp) / "single.lua"
        script.write_text(lua_script([json.dumps({"text": t}) for t in texts]))
        for name, env in configurations.items():
            port = free_port()
            cmd = [sys.executable, "-m", "rnnserve.service", "--models-dir", args.models_dir, "--no-access-log",
                   "--log-level", "warning", "--grpc-port", "0", "--port", str(port)]
            proc = start_server(cmd, port, env={**os.environ, **env})
            url = f"http://127.0.0.1:{port}/v1/models/{args.model}/predict"
            try:
                run_wrk(url, script, 8, 2)  # warm-up
                report["results"][name] = [{"scenario": f"single text, c={c}", **run_wrk(url, script, c,
                                                                                         args.duration)}
                                           for c in (1, 64)]
            finally:
                stop_server(proc)
        events = sum(1 for _ in sink.open()) if sink.exists() else 0
    first = {r["scenario"]: r["requests_per_s"] for r in report["results"]["off (defaults)"]}
    for rows in report["results"].values():
        for r in rows:
            r["vs_off"] = r["requests_per_s"] / first[r["scenario"]]
    report["payload_events"], report["otlp_exports"] = events, Collector.exports
    print(f"{report['machine']}, model {args.model}, {args.duration}s per scenario; {events} payload events "
          f"written, {Collector.exports} OTLP exports ({Collector.received} bytes) received")
    print_and_save(report, "configuration", "vs_off", "vs off", "observability.json")
    collector.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
