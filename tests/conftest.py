"""Shared fixtures: the real data directory, tiny real model packages made by the training code, the real
ASGI app in-process (most API tests), and a real server on a free loopback port (signals, workers,
concurrency over real sockets, tritonclient)."""

from __future__ import annotations

import csv
import gzip
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from bench.common import wait_http

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = Path(__file__).resolve().parent.parent
LOCAL = "http://127.0.0.1:8000"  # in-process clients' origin


# The slow tier (marker `slow`): Docker images, a real browser, a Ray cluster, a wheel build, the bundled
# models over their full test splits, and training as the subject. `make test-fast` runs the rest.
SLOW_MODULES = {"test_docker", "test_page", "test_ray", "test_wheel", "test_bundled_models"}


def pytest_collection_modifyitems(items):
    for item in items:
        if item.path.stem in SLOW_MODULES or item.path.parent.name == "training":
            item.add_marker(pytest.mark.slow)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """In CI (RNNSERVE_CI=1) a skipped test fails: a skip there means missing tooling (Docker, Chromium,
    kubectl, the data), and a green run must have run everything."""
    outcome = yield
    report = outcome.get_result()
    if report.skipped and os.environ.get("RNNSERVE_CI") == "1" and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome, report.longrepr = "failed", f"skipped in CI, where nothing may be: {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    """The same for a whole module skipped at collection (pytest.importorskip)."""
    outcome = yield
    report = outcome.get_result()
    if report.skipped and os.environ.get("RNNSERVE_CI") == "1":
        report.outcome, report.longrepr = "failed", f"skipped in CI, where nothing may be: {report.longrepr}"
DATA_DIR = Path(os.environ.get("RNNSERVE_DATA_DIR", ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not (DATA_DIR / "imdb_word_index.json").is_file():
        pytest.skip(f"data directory {DATA_DIR} is absent (set RNNSERVE_DATA_DIR); real-data tests skipped")
    return DATA_DIR


def real_reviews(n: int) -> tuple[list[str], list[str]]:
    """The first n raw IMDB training reviews of each sentiment (or synthetic ones without the data)."""
    path = DATA_DIR / "raw" / "imdb_train.csv.gz"
    if not path.is_file():
        good = "a wonderful moving film with great acting and a superb story"
        bad = "a dull boring film with terrible acting and a stupid plot"
        texts = [f"{good} {i}" if i % 2 else f"{bad} {i}" for i in range(2 * n)]
        return texts, ["positive" if i % 2 else "negative" for i in range(2 * n)]
    pos, neg = [], []
    with gzip.open(path, "rt", encoding="utf-8", newline="") as fh:
        for row in csv.DictReader(fh):
            (pos if row["label"] == "1" else neg).append(row["review"])
            if len(pos) >= n and len(neg) >= n:
                break
    texts = [t for pair in zip(pos[:n], neg[:n]) for t in pair]
    return texts, ["positive", "negative"] * n


def write_csv(path: Path, texts: list[str], labels: list[str]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["text", "label"])
        w.writerows(zip(texts, labels))
    return path


@pytest.fixture(scope="session")
def reviews_csv(tmp_path_factory) -> Path:
    from tests.fixtures.build import reviews_csv as write_reviews

    return write_reviews(tmp_path_factory.mktemp("data"))


FIXTURES = ROOT / "tests" / "fixtures"  # tiny real packages, committed (make fixtures: tests/fixtures/build.py)


def _fixture_copy(tmp_path_factory, name: str, *parts: str) -> Path:
    """A copy of committed fixture folders (tests may change their repository), under a fresh directory."""
    root = tmp_path_factory.mktemp(name)
    for part in parts:
        source, target = part.split(":") if ":" in part else (part, part)
        shutil.copytree(FIXTURES / source, root / target)
    return root


@pytest.fixture(scope="session")
def model_repo(tmp_path_factory) -> Path:
    """Two tiny real packages: an LSTM sentiment model and a masked 3-class BiGRU (tests/fixtures/models)."""
    return _fixture_copy(tmp_path_factory, "repo", "models") / "models"


@pytest.fixture(scope="session")
def task_repo(tmp_path_factory) -> Path:
    """Tiny real packages of the other tasks (tests/fixtures/tasks): three numeric-sequence models (next value,
    wave kind, next value per step), a character-level classifier and a two-layer character LSTM language
    model, with the language model's Keras file in ../runs/lm."""
    return _fixture_copy(tmp_path_factory, "tasks", "tasks:models", "keras:runs") / "models"


@pytest.fixture(scope="session")
def trained_repo(tmp_path_factory) -> Path:
    """model_repo's two packages trained here, with their runs (../runs) and training files: for the tests
    whose subject is training (INT8, distillation), which read the packages' own data."""
    from tests.fixtures.build import build_models, reviews_csv

    root = tmp_path_factory.mktemp("trained")
    return build_models(root / "models", reviews_csv(root))


def port_open(port: int) -> bool:
    """Something listens on 127.0.0.1:port."""
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`python -m rnnserve.service` in a subprocess on a free loopback port, stopped at the end."""

    def __init__(self, models_dir: Path, *args: str, env: dict | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        workers = [] if "--workers" in args else ["--workers", "1"]  # one process unless a test says otherwise
        self.workers = int(args[args.index("--workers") + 1]) if "--workers" in args else 1
        # Each server its own gRPC port: workers share a port (SO_REUSEPORT), so servers must not
        self.grpc_port = free_port()
        self.grpc = f"127.0.0.1:{self.grpc_port}"
        cmd = [sys.executable, "-m", "rnnserve.service", "--models-dir", str(models_dir), "--port", str(self.port),
               "--grpc-port", str(self.grpc_port), "--no-access-log", *workers, *args]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, **(env or {})},
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def wait_live(self, timeout: float = 30) -> None:
        self._wait("/health/live", timeout)

    def wait_ready(self, timeout: float = 60) -> None:
        """Ready on whichever worker answers, then every worker has loaded the repository: a request that
        lands on any of them is served."""
        self._wait("/health/ready", timeout)
        if self.workers > 1:
            self.wait_workers(self.workers, timeout)

    def worker_pids(self) -> list[int]:
        """The server's live workers that have loaded the repository (each writes its status file then)."""
        return [int(p.stem) for p in Path("/tmp").glob("rnnserve-*/workers/*.json")
                if _child_of(int(p.stem), self.proc.pid)]

    def wait_workers(self, count: int, timeout: float = 90) -> list[int]:
        wait_until(lambda: len(self.worker_pids()) >= count, timeout, f"{count} workers to load")
        return self.worker_pids()

    def _wait(self, path: str, timeout: float) -> None:
        try:
            wait_http(self.url + path, self.proc, timeout)
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}: {self.proc.stdout.read()}") from None

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.stdout.read()


def _child_of(pid: int, parent: int) -> bool:
    """A live (not zombie) child process of `parent`."""
    try:
        state, ppid = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[:2]
    except OSError:
        return False
    return int(ppid) == parent and state != "Z"


def in_process(models_dir: Path, **settings) -> TestClient:
    """The real app with real models, driven in-process through Starlette's TestClient (lifespan included);
    use it as a context manager."""
    from rnnserve.service.app import create_app
    from rnnserve.service.settings import Settings

    # The base URL a browser on this machine would use: the service binds loopback by default. No gRPC port
    # unless the test asks for one.
    settings = {"grpc_port": 0} | settings
    return TestClient(create_app(Settings(models_dir=models_dir, access_log=False, **settings)),
                      raise_server_exceptions=False, base_url=LOCAL)


def wait_ready(client: TestClient, timeout: float = 60) -> None:
    wait_until(lambda: client.get("/health/ready").status_code == 200, timeout, "the models to load")


def wait_until(condition, timeout: float = 30, what: str = "the condition") -> None:
    """Poll condition() every 10 ms until it is true: tests wait on what the code exposes (a counter, a
    gauge, a port, a status), with a deadline, not for a fixed time. TimeoutError naming `what` past it."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {timeout} s for {what}")
        time.sleep(0.01)


@pytest.fixture(scope="session")
def api(model_repo):
    """The app over the two tiny packages, in-process."""
    with in_process(model_repo) as client:
        wait_ready(client)
        yield client


@pytest.fixture(scope="session")
def bundled_server():
    """A real server over the bundled packages in models/."""
    from rnnserve.service.settings import BUNDLED_MODELS

    srv = Server(BUNDLED_MODELS)
    srv.wait_ready(timeout=120)
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def server(model_repo):
    srv = Server(model_repo)
    srv.wait_ready()
    yield srv
    srv.stop()
