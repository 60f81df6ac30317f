"""Load benchmark with wrk, side by side in one run: the baseline a user would otherwise write (plain FastAPI +
onnxruntime, no batching, pure-Python tokenizer; 1 and 2 uvicorn workers) and this service (default settings,
and with Granian), same model, same reviews. Single-text requests at c=1, 16, 64, and 64-text batches.

    python bench/load.py [--model imdb-lstm-tutorial] [--duration 10] [--no-granian]
    python bench/load.py --service-only --model imdb-lstm-ensemble,imdb-lstm   # models side by side, one server

Needs `wrk` (apt-get install wrk). Requests carry real IMDB reviews of 800-1,000 characters (50 of them,
picked at random per request). Prints a table with each cell's ratio to the best baseline and writes
bench/results/load.json.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
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
    return LUA % ",".join("[==[" + b + "]==]" for b in bodies)


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


def scenarios(url: str, duration: int, tmp: Path, texts: list[str], batches: bool) -> list[dict]:
    single = tmp / "single.lua"
    single.write_text(lua_script([json.dumps({"text": t}) for t in texts]))
    batch = tmp / "batch.lua"
    batch.write_text(lua_script([json.dumps({"texts": (texts * 2)[i:i + 64]}) for i in range(len(texts))]))
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
    ap.add_argument("--model", default="imdb-lstm-tutorial", help="a model, or several (comma-separated) with "
                    "--service-only")
    ap.add_argument("--models-dir", default=str(ROOT / "models"))
    ap.add_argument("--duration", type=int, default=10, help="seconds per scenario")
    ap.add_argument("--no-granian", action="store_true", help="skip the Granian run")
    ap.add_argument("--service-only", action="store_true", help="no baselines: each --model on one server with "
                    "the default settings, one after another")
    args = ap.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk is not installed (apt-get install wrk)")
    texts = [t for t in reviews(2000) if 800 <= len(t) <= 1000][:50]
    if args.service_only:
        return compare_models(args, args.model.split(","), texts)
    package = max((Path(args.models_dir) / args.model).iterdir(), key=lambda p: int(p.name))
    service = [sys.executable, "-m", "rnnserve.service", "--models-dir", args.models_dir, "--no-access-log",
               "--log-level", "warning", "--port"]
    baseline = [sys.executable, "-m", "bench.baseline_server", str(package), "--port"]
    servers = {
        "baseline, 1 worker": (lambda port: baseline + [str(port)], True),
        "baseline, 2 workers": (lambda port: baseline + [str(port), "--workers", "2"], True),
        "rnnserve (defaults)": (lambda port: service + [str(port)], False),
    }
    if not args.no_granian:
        servers["rnnserve, --server granian"] = (lambda port: service + [str(port), "--server", "granian"], False)
    report = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "machine": machine(),
              "model": args.model, "duration_s": args.duration, "results": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for name, (cmd, is_baseline) in servers.items():
            port = free_port()
            proc = start_server(cmd(port), port)
            try:
                # the baseline takes one text per request, so it has no batch scenario
                report["results"][name] = scenarios(f"http://127.0.0.1:{port}/v1/models/{args.model}/predict",
                                                    args.duration, Path(tmp), texts, batches=not is_baseline)
            finally:
                stop_server(proc)
    best = {}
    for name, rows in report["results"].items():
        if name.startswith("baseline"):
            for r in rows:
                best[r["scenario"]] = max(best.get(r["scenario"], 0), r["requests_per_s"])
    for rows in report["results"].values():
        for r in rows:
            r["vs_best_baseline"] = r["requests_per_s"] / best[r["scenario"]] if r["scenario"] in best else None
    print(f"{report['machine']}, model {args.model}, {args.duration}s per scenario")
    print_and_save(report, "server", "vs_best_baseline", "vs best baseline", "load.json")
    return 0


def print_and_save(report: dict, column: str, ratio: str, ratio_header: str, filename: str) -> None:
    """The report's rows, one line each, with each row's `ratio` (None: blank) last; then bench/results/FILE."""
    width = max(len(column), *(len(name) for name in report["results"]))
    print(f"{column:{width}} {'scenario':22} {'req/s':>8} {'texts/s':>8} {'p50 ms':>7} {'p99 ms':>7} {'errors':>6} "
          f"{ratio_header:>24}")
    for name, rows in report["results"].items():
        for r in rows:
            value = "" if r[ratio] is None else f"{r[ratio]:.2f}x"
            print(f"{name:{width}} {r['scenario']:22} {r['requests_per_s']:8.0f} "
                  f"{r.get('texts_per_s', r['requests_per_s']):8.0f} {r['p50_ms']:7.2f} {r['p99_ms']:7.2f} "
                  f"{r['errors']:6d} {value:>24}")
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / filename).write_text(json.dumps(report, indent=2))


def compare_models(args, models: list[str], texts: list[str]) -> int:
    """Each model's scenarios on one server (default settings), side by side; bench/results/load_models.json."""
    port = free_port()
    proc = start_server([sys.executable, "-m", "rnnserve.service", "--models-dir", args.models_dir,
                         "--no-access-log", "--log-level", "warning", "--port", str(port)], port)
    report = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "machine": machine(),
              "duration_s": args.duration, "results": {}}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for model in models:
                url = f"http://127.0.0.1:{port}/v1/models/{model}/predict"
                report["results"][model] = scenarios(url, args.duration, Path(tmp), texts, batches=True)
    finally:
        stop_server(proc)
    first = report["results"][models[0]]
    for rows in report["results"].values():
        for r, base in zip(rows, first):
            r["vs_first"] = r["requests_per_s"] / base["requests_per_s"]
    print(f"{report['machine']}, rnnserve (defaults), {args.duration}s per scenario")
    print_and_save(report, "model", "vs_first", "vs " + models[0], "load_models.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
