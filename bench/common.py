"""Helpers shared by the benchmarks: start a server on a free loopback port, real review texts."""

from __future__ import annotations

import csv
import gzip
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = Path(os.environ.get("RNNSERVE_DATA_DIR", ROOT.parent / "shared" / "data"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(cmd: list[str], port: int, ready_path: str = "/health/ready", timeout: float = 120,
                 env: dict | None = None, log: Path | None = None):
    """Start a server and wait for ready_path to answer 200; its output goes to `log` (else nowhere)."""
    out = log.open("ab") if log else subprocess.DEVNULL
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=env)
    if log:
        out.close()  # the child holds its own copy
    try:
        wait_http(f"http://127.0.0.1:{port}{ready_path}", proc, timeout)
    except RuntimeError as exc:
        raise RuntimeError(f"{exc}: {' '.join(cmd)}") from None
    except TimeoutError:
        proc.kill()
        raise
    return proc


def wait_http(url: str, proc: subprocess.Popen | None, timeout: float) -> None:
    """Poll url until it answers 200 (a server's readiness). RuntimeError as soon as proc (the server, where
    this process started it) has exited; TimeoutError after timeout seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"{url} did not answer 200 within {timeout} s")


def stop_server(proc) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()


def server_pids(pid: int) -> list[int]:
    """A server process and its worker children."""
    return [pid] + [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and _ppid(p) == pid]


def process_tree(pid: int) -> list[int]:
    """A process and all its descendants (a Ray driver starts its cluster's processes beneath it)."""
    children: dict[int, list[int]] = {}
    for p in Path("/proc").iterdir():
        if p.name.isdigit() and (parent := _ppid(p)) is not None:
            children.setdefault(parent, []).append(int(p.name))
    out, todo = [], [pid]
    while todo:
        out.append(todo.pop())
        todo += children.get(out[-1], [])
    return out


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    """One process's status field in MB: VmRSS (now) or VmHWM (peak)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field):
                return int(line.split()[1]) / 1024
    except OSError:  # it has just exited
        pass
    return 0.0


def _ppid(proc_dir: Path) -> int | None:
    try:
        return int(proc_dir.joinpath("stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def reviews(n: int | None = None) -> list[str]:
    """Raw IMDB training reviews (all 25,000 when n is None)."""
    path = DATA_DIR / "raw" / "imdb_train.csv.gz"
    if not path.is_file():
        sys.exit(f"needs {path} (set RNNSERVE_DATA_DIR)")
    with gzip.open(path, "rt", encoding="utf-8", newline="") as fh:
        out = []
        for row in csv.DictReader(fh):
            out.append(row["review"])
            if n is not None and len(out) >= n:
                break
    return out


def machine() -> str:
    return f"{os.cpu_count()} CPUs, {os.uname().machine}, Python {sys.version.split()[0]}"


def median_ms(session, x, repeat: int) -> float:
    """Median onnxruntime run time for input x, after one warm-up run."""
    session.run(None, {"input_ids": x})
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        session.run(None, {"input_ids": x})
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000
