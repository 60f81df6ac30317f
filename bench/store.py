"""Models in a bucket against the same models on disk: time to first ready (a cold cache, and a restart on the
warm cache), time for a new version to reach every worker, and predict throughput (the bucket-backed server
serves its verified local copies, so it should equal the local one). The bucket is moto's S3 server on loopback.

    python bench/store.py [--models-dir models] [--model imdb-lstm] [--workers 2] [--poll-s 1] [--duration 10]

Throughput needs `wrk` (apt-get install wrk): single-text /v1 predict at c=64, local and bucket alternating
(--rounds each). Prints a table and writes bench/results/store.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import ROOT, free_port, machine, reviews, start_server, stop_server  # noqa: E402
from bench.load import lua_script, run_wrk  # noqa: E402
from bench.stores import MotoS3  # noqa: E402


def serve(models_dir: str, args, env: dict, cache: Path | None = None) -> tuple[subprocess.Popen, str, float]:
    """A server started and ready: (process, url, seconds from start to ready)."""
    port = free_port()
    cmd = [sys.executable, "-m", "rnnserve.service", "--models-dir", models_dir, "--port", str(port),
           "--grpc-port", "0", "--workers", str(args.workers), "--repository-poll-s", str(args.poll_s),
           "--no-access-log"] + (["--models-cache-dir", str(cache)] if cache else [])
    started = time.perf_counter()
    proc = start_server(cmd, port, timeout=600, env=env)
    return proc, f"http://127.0.0.1:{port}", time.perf_counter() - started


def every_worker_serves(url: str, model: str, version: int, workers: int) -> bool:
    """Enough requests that each worker answered some (the kernel spreads connections), all from `version`."""
    replies = [httpx.post(f"{url}/v1/models/{model}/predict", json={"text": "a fine film"})
               for _ in range(10 * workers)]
    return all(r.status_code == 200 and r.json()["version"] == version for r in replies)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models-dir", default=str(ROOT / "models"))
    ap.add_argument("--model", default="imdb-lstm", help="the model whose new version is timed and loaded")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--poll-s", type=float, default=1.0)
    ap.add_argument("--duration", type=int, default=10, help="seconds per throughput run")
    ap.add_argument("--rounds", type=int, default=2, help="throughput runs per server, alternating")
    args = ap.parse_args()
    from rnnserve.service.store.client import open_store, upload_package

    local = Path(args.models_dir)
    packages = sorted(p for p in local.glob("*/*") if (p / "manifest.json").is_file())
    size = sum(f.stat().st_size for p in packages for f in p.iterdir())
    moto = MotoS3("models")
    env = {**os.environ, **moto.env()}
    os.environ.update(moto.env())  # this process uploads with the same credentials
    url = "s3://models/repository"
    store = open_store(url)
    result: dict = {"machine": machine(), "date": datetime.now(UTC).isoformat(timespec="seconds"),
                    "packages": len(packages), "bytes": size, "workers": args.workers, "poll_s": args.poll_s}
    tmp = Path(tempfile.mkdtemp(prefix="rnnserve-bench-store-"))
    servers = []
    try:
        started = time.perf_counter()
        for package in packages:
            upload_package(store, url, package, f"{package.parent.name}/{package.name}")
        result["upload_s"] = time.perf_counter() - started
        proc, _, result["ready_local_s"] = serve(str(local), args, env)
        stop_server(proc)
        proc, _, result["ready_bucket_cold_s"] = serve(url, args, env, tmp / "cache")
        stop_server(proc)
        proc, bucket_url, result["ready_bucket_warm_s"] = serve(url, args, env, tmp / "cache")
        servers.append(proc)
        # A new version: uploaded (its manifest last), then every worker serves it.
        source = next(p for p in packages if p.parent.name == args.model)
        version = max(int(p.name) for p in (local / args.model).iterdir() if p.name.isdigit()) + 1
        started = time.perf_counter()
        upload_package(store, url, source, f"{args.model}/{version}")
        uploaded = time.perf_counter()
        while not every_worker_serves(bucket_url, args.model, version, args.workers):
            time.sleep(0.02)
        result["new_version"] = {"upload_s": uploaded - started,
                                 "served_after_upload_s": time.perf_counter() - uploaded}
        if shutil.which("wrk"):
            proc, local_url, _ = serve(str(local), args, env)
            servers.append(proc)
            script = tmp / "single.lua"
            script.write_text(lua_script([json.dumps({"text": t}) for t in reviews(50)]))
            runs: dict[str, list[dict]] = {"local": [], "bucket": []}
            for _ in range(args.rounds):
                for name, base in (("local", local_url), ("bucket", bucket_url)):
                    runs[name].append(run_wrk(f"{base}/v1/models/{args.model}/predict", script, 64, args.duration))
            result["throughput_c64"] = runs
    finally:
        for proc in servers:
            stop_server(proc)
        moto.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    report(result)
    out = ROOT / "bench" / "results" / "store.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    return 0


def report(r: dict) -> None:
    print(f"{r['packages']} packages, {r['bytes'] / 1e6:.1f} MB, {r['workers']} workers, poll {r['poll_s']} s; "
          f"{r['machine']}, {r['date']}")
    print(f"upload to the bucket (manifest last):      {r['upload_s']:.2f} s")
    print(f"ready, local repository:                  {r['ready_local_s']:.2f} s")
    print(f"ready, bucket, cold cache:                {r['ready_bucket_cold_s']:.2f} s")
    print(f"ready, bucket, warm cache (a restart):    {r['ready_bucket_warm_s']:.2f} s")
    new = r["new_version"]
    print(f"new version: upload {new['upload_s']:.2f} s, then served by every worker "
          f"{new['served_after_upload_s']:.2f} s")
    for name, runs in r.get("throughput_c64", {}).items():
        cells = ", ".join(f"{x['requests_per_s']:.0f} req/s (p50 {x['p50_ms']:.1f} ms, p99 {x['p99_ms']:.1f} ms, "
                          f"{x['errors']} errors)" for x in runs)
        print(f"single text c=64, {name:6s}: {cells}")


if __name__ == "__main__":
    sys.exit(main())
