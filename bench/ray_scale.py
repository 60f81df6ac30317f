"""What Ray costs on one machine, side by side in one run:

- Ray Data scoring of a generated 1,000,000-row JSON Lines file (real reviews, cycled) with 1 and 2 actors,
  against the local `rnnserve-score` (rows/s end to end, process and cluster start included; peak memory
  summed over the whole process tree, Ray's shared object store counted in each process that maps it);
- Ray Serve (deploy/ray/serve.yaml with 1 or 2 fixed replicas; by default and, where haproxy is installed, in
  Ray's high-throughput mode) against the plain service (1 or 2 workers): single-text /v1 predict requests
  with wrk, c=64.

    python bench/ray_scale.py [--model imdb-lstm-small] [--rows 1000000] [--duration 15] [--skip-data] [--skip-serve]

Needs the [ray] extra and wrk. Writes bench/results/ray_scale.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import ROOT, free_port, machine, process_tree, reviews, rss_mb, start_server, stop_server  # noqa: E402
from bench.load import lua_script, run_wrk  # noqa: E402
from bench.score import generated_rows  # noqa: E402


def run_measured(cmd: list[str]) -> tuple[float, float]:
    """Seconds and peak summed RSS (MB) of a command and its descendants, sampled every 0.2 s."""
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peak = 0.0

    def sample():
        nonlocal peak
        while proc.poll() is None:
            peak = max(peak, sum(rss_mb(p) for p in process_tree(proc.pid)))
            time.sleep(0.2)

    started = time.perf_counter()
    watcher = threading.Thread(target=sample, daemon=True)
    watcher.start()
    _, err = proc.communicate()
    seconds = time.perf_counter() - started
    watcher.join()
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed: {err[-2000:]}")
    return seconds, peak


def data_runs(package: Path, rows: int, tmp: Path) -> list[dict]:
    source = tmp / "rows.jsonl"
    with open(source, "wb") as fh:
        for chunk in generated_rows(rows, reviews(5000)):
            fh.write(chunk)
    score = [sys.executable, "-m", "rnnserve.service.scoring.cli", str(source), "--package", str(package),
             "--text-column", "review"]
    runs = {"local rnnserve-score (defaults)": score + ["-o", str(tmp / "local.jsonl")]}
    for actors in (1, 2):
        runs[f"Ray Data, {actors} actor{'s' * (actors > 1)}"] = score + [
            "--engine", "ray", "--actors", str(actors), "--threads", "1", "--output-format", "parquet",
            "-o", str(tmp / f"ray-{actors}")]
    results = []
    for name, cmd in runs.items():
        seconds, peak = run_measured(cmd)
        results.append({"run": name, "rows": rows, "seconds": seconds, "rows_per_s": rows / seconds,
                        "peak_rss_mb": peak})
        print(f"{name:34} {rows:>9,} rows {seconds:7.1f} s {rows / seconds:8.0f} rows/s  peak {peak:6.0f} MB",
              flush=True)
    return results


def stop_all(proc: subprocess.Popen) -> None:
    """Stop a server and wait for its whole process tree (`serve run`'s local Ray cluster, its HAProxy) to be
    gone, so the next run starts on a quiet machine with its ports free."""
    pids = process_tree(proc.pid)
    proc.send_signal(signal.SIGINT)  # serve run shuts its application and local cluster down on Ctrl-C
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        stop_server(proc)
    deadline = time.monotonic() + 30
    while (alive := [p for p in pids if Path(f"/proc/{p}").exists()]) and time.monotonic() < deadline:
        time.sleep(0.5)
    for pid in alive:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def serve_config(tmp: Path, port: int, replicas: int) -> Path:
    config = yaml.safe_load((ROOT / "deploy" / "ray" / "serve.yaml").read_text())
    config["http_options"]["port"] = port
    deployment = config["applications"][0]["deployments"][0]
    deployment.pop("autoscaling_config")
    deployment["num_replicas"] = replicas
    path = tmp / f"serve-{replicas}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def serve_runs(model: str, duration: int, tmp: Path) -> list[dict]:
    script = tmp / "single.lua"
    script.write_text(lua_script([json.dumps({"text": t}) for t in
                                  [t for t in reviews(2000) if 800 <= len(t) <= 1000][:50]]))
    service = [sys.executable, "-m", "rnnserve.service", "--no-access-log", "--log-level", "warning"]
    serve = str(Path(sys.executable).parent / "serve")
    runs = {"plain service, 1 worker": lambda port: service + ["--workers", "1", "--port", str(port)],
            "plain service, 2 workers": lambda port: service + ["--workers", "2", "--port", str(port)]}
    for replicas in (1, 2):
        runs[f"Ray Serve, {replicas} replica{'s' * (replicas > 1)}"] = \
            lambda port, n=replicas: [serve, "run", str(serve_config(tmp, port, n))]
        if shutil.which("haproxy"):  # Ray's high-throughput mode (Ray >= 2.56): HAProxy ingress, direct gRPC
            runs[f"Ray Serve, {replicas} replica{'s' * (replicas > 1)}, HAProxy mode"] = \
                lambda port, n=replicas: ["env", "RAY_SERVE_ENABLE_HA_PROXY=1", "RAY_SERVE_THROUGHPUT_OPTIMIZED=1",
                                          serve, "run", str(serve_config(tmp, port, n))]
    results = []
    for name, cmd in runs.items():
        port = free_port()
        proc = start_server(cmd(port), port, ready_path="/v2/health/ready", timeout=300)
        url = f"http://127.0.0.1:{port}/v1/models/{model}/predict"
        try:
            subprocess.run(["wrk", "-t2", "-c64", "-d5s", "-s", str(script), url], capture_output=True)  # warm-up
            r = {"run": name, **run_wrk(url, script, 64, duration)}
        finally:
            stop_all(proc)
        results.append(r)
        print(f"{name:34} c=64 {r['requests_per_s']:8.0f} req/s  p50 {r['p50_ms']:6.1f} ms  p99 {r['p99_ms']:6.1f} ms"
              f"  errors {r['errors']}", flush=True)
    return results


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="imdb-lstm-small")
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--duration", type=int, default=15, help="seconds of load per server")
    ap.add_argument("--skip-data", action="store_true")
    ap.add_argument("--skip-serve", action="store_true")
    args = ap.parse_args()
    if not args.skip_serve and not shutil.which("wrk"):
        sys.exit("wrk is not installed (apt-get install wrk)")
    package = max((ROOT / "models" / args.model).iterdir(), key=lambda p: int(p.name))
    print(f"{machine()}; model {args.model}")
    report = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "machine": machine(),
              "model": args.model}
    with tempfile.TemporaryDirectory() as tmp:
        if not args.skip_data:
            report["data"] = data_runs(package, args.rows, Path(tmp))
        if not args.skip_serve:
            report["serve"] = serve_runs(args.model, args.duration, Path(tmp))
    (ROOT / "bench" / "results").mkdir(exist_ok=True)
    (ROOT / "bench" / "results" / "ray_scale.json").write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
