"""Memory per worker with the bundled models: RSS and PSS of each worker process (PSS counts pages shared between
processes, the libraries' code above all, once among them): ready; just after every model has answered 64 long
texts ("served"); and ARENA_SHRINK_S later, once the shared onnxruntime arena has given back what no run holds
("settled").

    python bench/memory.py [--workers 1 2 4] [--models-dir models]

Reads /proc/PID/smaps_rollup (Linux). Prints one line per worker count.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import ROOT, free_port, server_pids, start_server, stop_server  # noqa: E402
from rnnserve.service.state import ARENA_SHRINK_S  # noqa: E402


def memory(pid: int) -> tuple[float, float]:
    """(RSS, PSS) of a process in MB."""
    values = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("Rss", "Pss"):
            values[key] = int(rest.split()[0]) / 1024
    return values["Rss"], values["Pss"]


def touch_every_model(url: str) -> None:
    for model in httpx.get(f"{url}/v1/models", timeout=30).json()["models"]:
        body = ({"sequences": [[0.1] * 10]} if model["task"].startswith("sequence") else
                {"texts": ["A moving, beautifully acted film. " * 20] * 64})
        httpx.post(f"{url}/v1/models/{model['name']}/predict", json=body, timeout=60)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--models-dir", default=str(ROOT / "models"))
    args = ap.parse_args()
    print(f"{'workers':>7} {'state':8} {'RSS MB/worker':>14} {'PSS MB/worker':>14} {'PSS MB total':>13}")
    for workers in args.workers:
        port = free_port()
        proc = start_server([sys.executable, "-m", "rnnserve.service", "--models-dir", args.models_dir, "--port",
                             str(port), "--grpc-port", str(free_port()), "--workers", str(workers),
                             "--no-access-log", "--log-level", "warning"], port)
        try:
            for state in ("ready", "served", "settled"):
                if state == "served":
                    for _ in range(workers * 3):  # connections reach the workers as the kernel picks
                        touch_every_model(f"http://127.0.0.1:{port}")
                if state == "settled":
                    time.sleep(ARENA_SHRINK_S + 1)
                pids = [pid for pid in server_pids(proc.pid) if pid != proc.pid] or [proc.pid]
                figures = [memory(pid) for pid in pids]
                rss, pss = (statistics.mean(f[i] for f in figures) for i in (0, 1))
                print(f"{workers:>7} {state:8} {rss:>14.0f} {pss:>14.0f} {sum(f[1] for f in figures):>13.0f}",
                      flush=True)
        finally:
            stop_server(proc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
