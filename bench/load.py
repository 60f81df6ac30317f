"""Load benchmark with wrk: single-text requests at concurrency 1, 16, 64 and 64-text batch requests.

    python bench/load.py [--model imdb-lstm] [--models-dir models] [--duration 10] [--baseline]

Needs `wrk` (Debian/Ubuntu: apt-get install wrk). Requests carry real IMDB reviews (the first 500
of the raw training set, chosen at random per request). Prints a table and writes bench/results/load.json.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import ROOT, free_port, machine, reviews, start_server, stop_server  # noqa: E402

LUA = """
bodies = {%s}
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
math.randomseed(42)
request = function()
  return wrk.format(nil, nil, nil, bodies[math.random(#bodies)])
end
"""


def lua_script(bodies: list[str]) -> str:
    quoted = ",".join("[==[" + b + "]==]" for b in bodies)
    return LUA % quoted


def run_wrk(url: str, script: Path, connections: int, duration: int) -> dict:
    threads = 1 if connections < 2 else 2
    out = subprocess.run(["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration}s", "--latency", "-s", str(script),
                          url], capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    lat = {p: _ms(v, unit) for p, v, unit in re.findall(r"\s(50|99)%\s+([\d.]+)(us|ms|s)\b", out)}
    errors = sum(int(x) for x in re.findall(r"(?:Non-2xx or 3xx responses|timeout|connect|read|write):?\s+(\d+)", out))
    return {"connections": connections, "requests_per_s": rps, "p50_ms": lat.get("50"), "p99_ms": lat.get("99"),
            "errors": errors}


def _ms(value: str, unit: str) -> float:
    return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]


def scenarios(url: str, duration: int, tmp: Path, texts: list[str], batches: bool = True) -> list[dict]:
    single = tmp / "single.lua"
    single.write_text(lua_script([json.dumps({"text": t}) for t in texts]))
    batch = tmp / "batch.lua"
    batch.write_text(lua_script([json.dumps({"texts": texts[i:i + 64]}) for i in range(0, len(texts) - 64, 64)]))
    results = []
    subprocess.run(["wrk", "-t1", "-c8", "-d2s", "-s", str(single), url], capture_output=True)  # warm-up
    for c in (1, 16, 64):
        results.append({"scenario": f"single text, c={c}", **run_wrk(url, single, c, duration)})
    if batches:
        r = run_wrk(url, batch, 4, duration)
        results.append({"scenario": "64-text batches, c=4", **r, "texts_per_s": r["requests_per_s"] * 64})
    return results


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="imdb-lstm")
    ap.add_argument("--models-dir", default=str(ROOT / "models"))
    ap.add_argument("--duration", type=int, default=10, help="seconds per scenario")
    ap.add_argument("--baseline", action="store_true", help="also run the plain FastAPI + onnxruntime baseline")
    ap.add_argument("--server-arg", action="append", default=[], help="extra flag for the service (repeatable)")
    args = ap.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk is not installed (apt-get install wrk)")
    texts = reviews(500)
    servers = {"rnnserve": lambda port: [sys.executable, "-m", "service", "--models-dir", args.models_dir,
                                         "--port", str(port), "--no-access-log", "--log-level", "warning",
                                         *args.server_arg]}
    if args.baseline:
        package = max((Path(args.models_dir) / args.model).iterdir(), key=lambda p: int(p.name))
        servers["baseline (no batching)"] = lambda port: [sys.executable, "bench/baseline_server.py", str(package),
                                                          "--port", str(port)]
    report = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": machine(),
              "model": args.model, "duration_s": args.duration, "results": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for name, cmd in servers.items():
            port = free_port()
            proc = start_server(cmd(port), port)
            try:
                # the baseline takes one text per request, so it has no batch scenario
                report["results"][name] = scenarios(f"http://127.0.0.1:{port}/v1/models/{args.model}/predict",
                                                    args.duration, Path(tmp), texts, batches=name == "rnnserve")
            finally:
                stop_server(proc)
    print(f"{report['machine']}, model {args.model}, {args.duration}s per scenario")
    print(f"{'server':24} {'scenario':24} {'req/s':>9} {'texts/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}")
    for name, rows in report["results"].items():
        for r in rows:
            print(f"{name:24} {r['scenario']:24} {r['requests_per_s']:9.0f} {r.get('texts_per_s', r['requests_per_s']):9.0f} "
                  f"{r['p50_ms']:8.2f} {r['p99_ms']:8.2f} {r['errors']:7d}")
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / "load.json").write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
