"""Triton's own load generator, perf_analyzer, unchanged against this server over HTTP and gRPC.

    python bench/perf_analyzer.py [--workers 2] [--concurrency 1 16 64] [--models imdb-lstm waves-lstm-tutorial]

The perf_analyzer that runs on Debian 12 (glibc 2.36) is the one inside the tritonclient 2.41.1 wheel (the PyPI
`perf-analyzer` 2.60 wheel needs glibc 2.38): it is downloaded with pip into a cache folder, with libcudart.so.12
from the nvidia-cuda-runtime-cu12 wheel on its library path (no GPU is used); it needs Debian's libb64-0d
(`apt-get install libb64-0d`). Text models get one review a request (`--string-data`), numeric models random
FP32 sequences, and the stateful one sequences (it is configured with sequence_batching). Protocols alternate
at each concurrency; the table gives perf_analyzer's own throughput and p99 latency.
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import ROOT, free_port, start_server, stop_server  # noqa: E402

VERSION = "2.41.1"
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "rnnserve" / f"perf_analyzer-{VERSION}"
REVIEW = ("A moving, beautifully acted film: the story takes its time, but the last hour is as good as anything "
          "this year. The score and the photography are superb, and the cast never puts a foot wrong.")


class Unavailable(RuntimeError):
    pass


def install(cache: Path = CACHE) -> tuple[Path, dict[str, str]]:
    """(the perf_analyzer binary, the environment it runs in), downloaded once into `cache`. Unavailable with
    the reason when it cannot run here."""
    binary, lib = cache / "perf_analyzer", cache / "cuda" / "nvidia" / "cuda_runtime" / "lib"
    if not binary.exists():
        cache.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=cache) as tmp:
            for wheel in (f"tritonclient=={VERSION}", "nvidia-cuda-runtime-cu12>=12,<13"):
                r = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", tmp, wheel],
                                   capture_output=True, text=True)
                if r.returncode:
                    raise Unavailable(f"pip download {wheel} failed: {r.stderr[-500:]}")
            for path in Path(tmp).glob("*.whl"):
                with zipfile.ZipFile(path) as z:
                    for member in z.namelist():
                        if member.endswith("/bin/perf_analyzer"):
                            (cache / "perf_analyzer.tmp").write_bytes(z.read(member))
                        elif member.startswith("nvidia/cuda_runtime/lib/libcudart.so"):
                            z.extract(member, cache / "cuda")
        (cache / "perf_analyzer.tmp").chmod(0o755)
        (cache / "perf_analyzer.tmp").rename(binary)
    env = {**os.environ, "LD_LIBRARY_PATH": f"{lib}:{os.environ.get('LD_LIBRARY_PATH', '')}"}
    missing = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, env=env).stdout
    if "not found" in missing:
        lines = [line.strip() for line in missing.splitlines() if "not found" in line]
        raise Unavailable(f"perf_analyzer lacks {lines} (libb64: apt-get install libb64-0d)")
    return binary, env


def measure(binary: Path, env: dict[str, str], model: str, protocol: str, url: str, concurrency: int,
            interval_ms: int = 3000) -> dict[str, float]:
    """One perf_analyzer run: {"throughput": infer/s, "p50_ms", "p99_ms"}. RuntimeError with its output when it
    fails."""
    with tempfile.NamedTemporaryFile(suffix=".csv") as out:
        cmd = [str(binary), "-m", model, "-i", protocol, "-u", url, "--concurrency-range", str(concurrency),
               "--measurement-interval", str(interval_ms), "--stability-percentage", "50", "--max-trials", "6",
               "-f", out.name]
        if not model.startswith("waves"):
            cmd += ["--string-data", REVIEW]
        r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
        if r.returncode:
            raise RuntimeError(f"perf_analyzer {' '.join(cmd[1:])} failed ({r.returncode}):\n{r.stdout}{r.stderr}")
        row = next(csv.DictReader(Path(out.name).read_text().splitlines()))
    return {"throughput": float(row["Inferences/Second"]), "p50_ms": int(row["p50 latency"]) / 1000,
            "p99_ms": int(row["p99 latency"]) / 1000}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--models", nargs="+", default=["imdb-lstm", "reuters-lstm", "waves-lstm-tutorial"])
    args = parser.parse_args()
    try:
        binary, env = install()
    except Unavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    http, grpc_port = free_port(), free_port()
    proc = start_server([sys.executable, "-m", "rnnserve.service", "--port", str(http), "--grpc-port",
                         str(grpc_port), "--workers", str(args.workers), "--no-access-log"], http)
    print(f"perf_analyzer {VERSION}, {args.workers} workers, the bundled models ({ROOT / 'models'})")
    print(f"{'model':22} {'c':>3} {'protocol':8} {'infer/s':>9} {'p50 ms':>8} {'p99 ms':>8}")
    try:
        for model in args.models:
            for c in args.concurrency:
                for protocol, url in (("http", f"127.0.0.1:{http}"), ("grpc", f"127.0.0.1:{grpc_port}")):
                    m = measure(binary, env, model, protocol, url, c)
                    print(f"{model:22} {c:>3} {protocol:8} {m['throughput']:>9.0f} {m['p50_ms']:>8.2f} "
                          f"{m['p99_ms']:>8.2f}", flush=True)
    finally:
        stop_server(proc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
