"""A worker process killed with SIGKILL under load: requests failed, and how long until its replacement has
loaded the repository and serves.

    python bench/worker_death.py [--models-dir models] [--workers 2] [--clients 4] [--seconds 8]

Starts the server on a free loopback port, sends single-text /predict requests from --clients threads for
--seconds, kills one worker after a third of that time, and counts what failed. The replacement is the new
worker whose model-control status file appears (written once it has loaded every model).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import ROOT, free_port, machine, start_server, stop_server  # noqa: E402


def loaded_workers(parent: int) -> set[int]:
    """Live children of the server that have written their status (they have loaded the repository)."""
    found = set()
    for path in Path("/tmp").glob("rnnserve-*/workers/*.json"):
        try:
            state, ppid = Path(f"/proc/{path.stem}/stat").read_text().rsplit(")", 1)[1].split()[:2]
        except OSError:
            continue
        if int(ppid) == parent and state != "Z":
            found.add(int(path.stem))
    return found


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models-dir", default=str(ROOT / "models"))
    ap.add_argument("--model", default="imdb-lstm-small")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=8.0)
    args = ap.parse_args()
    port = free_port()
    proc = start_server([sys.executable, "-m", "rnnserve.service", "--models-dir", args.models_dir, "--port",
                         str(port), "--workers", str(args.workers), "--no-access-log"], port, timeout=300)
    try:
        while len(loaded_workers(proc.pid)) < args.workers:
            time.sleep(0.05)
        codes: list[int] = []
        stop = threading.Event()

        def client():
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
                while not stop.is_set():
                    try:
                        codes.append(http.post(f"/v1/models/{args.model}/predict",
                                               json={"text": "a fine film, well acted"}).status_code)
                    except httpx.HTTPError:
                        codes.append(0)

        threads = [threading.Thread(target=client) for _ in range(args.clients)]
        for t in threads:
            t.start()
        time.sleep(args.seconds / 3)
        before = loaded_workers(proc.pid)
        victim = min(before)
        os.kill(victim, signal.SIGKILL)
        killed = time.monotonic()
        while not (loaded_workers(proc.pid) - before):
            time.sleep(0.01)
        replaced = time.monotonic() - killed
        time.sleep(max(0.0, killed + args.seconds * 2 / 3 - time.monotonic()))
        stop.set()
        for t in threads:
            t.join()
    finally:
        stop_server(proc)
    failed = sum(code != 200 for code in codes)
    print(f"{machine()}; {args.workers} workers, {args.clients} clients, models from {args.models_dir}")
    print(f"requests: {len(codes):,}, failed: {failed} (status {sorted({c for c in codes if c != 200})}); "
          f"replacement loaded and serving {replaced:.2f} s after the kill")
    return 0


if __name__ == "__main__":
    sys.exit(main())
