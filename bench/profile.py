"""Where a worker's CPU goes per request: py-spy samples one server process under wrk load (single-text
requests, c=64) and sorts every sample into a category by its innermost Python frame.

    python bench/profile.py [--model imdb-lstm-tutorial] [--seconds 10] [--server-arg=--server=granian]

Needs wrk and py-spy (both in the dev set-up: apt-get install wrk; py-spy is in the [dev] extra). The server
runs with one worker so one process holds every request. Writes bench/results/profile.json and the raw
collapsed stacks next to it (for flame graphs).
"""

from __future__ import annotations

import argparse
import collections
import json
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import ROOT, free_port, machine, reviews, start_server, stop_server  # noqa: E402
from bench.load import lua_script  # noqa: E402

# (category, substrings of the innermost frame), first match wins; idle threads are counted apart
IDLE = ("concurrent/futures/thread.py", "asyncio/runners.py", "selectors.py", "threading.py")
CATEGORIES = [
    ("onnxruntime", ("onnxruntime/",)),
    ("tokenizer", ("service/core/tokenizer.py",)),
    ("JSON and validation", ("pydantic", "orjson", "json/", "service/http/body.py")),
    ("HTTP server (uvicorn, httptools, Granian)", ("uvicorn/", "httptools", "granian")),
    ("framework (FastAPI, Starlette)", ("fastapi/", "starlette/")),
    ("environment reads", ("<frozen os>",)),
    ("numpy", ("numpy/",)),
    ("request ids, metrics, logs", ("service/http/middleware.py", "prometheus_client", "logging/", "service/logs.py",
                                    "uuid")),
    ("batcher and runtime", ("service/runtime/batcher.py", "service/runtime/text.py", "service/runtime/session.py")),
    ("other service code", ("service/",)),
    ("asyncio", ("asyncio/", "uvloop")),
]


def categorise(raw: str) -> tuple[dict[str, float], int]:
    counts: collections.Counter[str] = collections.Counter()
    for line in raw.splitlines():
        if not line.strip():
            continue
        stack, n = line.rsplit(" ", 1)
        leaf = stack.split(";")[-1]
        if any(p in leaf for p in IDLE):
            continue
        counts[next((name for name, pats in CATEGORIES if any(p in leaf for p in pats)), "other")] += int(n)
    busy = sum(counts.values())
    return {name: counts[name] / busy for name, _ in CATEGORIES + [("other", ())] if counts[name]}, busy


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="imdb-lstm-tutorial")
    ap.add_argument("--models-dir", default=str(ROOT / "models"))
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--server-arg", action="append", default=[], help="extra flag for the service (repeatable)")
    args = ap.parse_args()
    texts = [t for t in reviews(2000) if 800 <= len(t) <= 1000][:50]
    port = free_port()
    proc = start_server([sys.executable, "-m", "rnnserve.service", "--models-dir", args.models_dir, "--port", str(port),
                         "--workers", "1", "--no-access-log", "--log-level", "warning", *args.server_arg], port)
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            script = Path(tmp) / "single.lua"
            script.write_text(lua_script([json.dumps({"text": t}) for t in texts]))
            url = f"http://127.0.0.1:{port}/v1/models/{args.model}/predict"
            load = subprocess.Popen(["wrk", "-t2", "-c64", f"-d{args.seconds + 4}s", "-s", str(script), url],
                                    stdout=subprocess.PIPE, text=True)
            time.sleep(2)
            subprocess.run(["py-spy", "record", "--subprocesses", "-p", str(proc.pid), "-d", str(args.seconds),
                            "-r", "200", "-f", "raw", "-o", str(out / "profile.txt")], check=True,
                           capture_output=True)
            rps = load.communicate()[0].split("Requests/sec:")[1].split()[0]
    finally:
        stop_server(proc)
    shares, busy = categorise((out / "profile.txt").read_text())
    print(f"{machine()}; one worker at c=64 ({rps} req/s while sampled); {busy} busy samples")
    for name, share in sorted(shares.items(), key=lambda kv: -kv[1]):
        print(f"{share * 100:5.1f}%  {name}")
    report = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "machine": machine(),
              "model": args.model, "requests_per_s": float(rps), "busy_samples": busy, "shares": shares}
    (out / "profile.json").write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
