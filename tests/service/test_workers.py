"""One server whatever its worker count: model control, repository polling, metrics and a worker's death, on
real servers with two and three worker processes on loopback (bounded in requests and time)."""

import os
import re
import shutil
import signal
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import Server, wait_until

NAME = "sentiment-lstm"


@pytest.fixture()
def repo(tmp_path, model_repo) -> Path:
    shutil.copytree(model_repo / NAME, tmp_path / "models" / NAME)
    return tmp_path / "models"


@pytest.fixture()
def serve(repo):
    """Start a server over `repo` with N workers, once every worker has loaded it; stopped at the end."""
    started = []

    def start(workers: int, *args: str) -> Server:
        started.append(srv := Server(repo, "--workers", str(workers), *args))
        srv.wait_ready()  # every worker has loaded it
        return srv

    yield start
    for srv in started:
        srv.stop()


def predict(client: httpx.Client, text: str = "a fine film") -> httpx.Response:
    return client.post(f"/v1/models/{NAME}/predict", json={"text": text})


def index(client: httpx.Client) -> list[dict]:
    return client.post("/v2/repository/index").json()


def requests_total(client: httpx.Client, endpoint: str = "/v1/models/{name}/predict") -> float:
    text = client.get("/metrics").text
    return sum(float(v) for labels, v in re.findall(r"^rnnserve_requests_total\{(.*)\} (\S+)$", text, re.M)
               if f'model="{NAME}"' in labels and f'endpoint="{endpoint}"' in labels)


def test_load_unload_and_reload_reach_every_worker(repo, serve):
    srv = serve(2)
    with httpx.Client(base_url=srv.url, timeout=30) as client:
        assert client.post(f"/v2/repository/models/{NAME}/unload").status_code == 200
        assert [predict(client).status_code for _ in range(50)] == [404] * 50
        states = [[m["state"] for m in index(client) if m["name"] == NAME] for _ in range(20)]
        assert states == [["UNAVAILABLE"]] * 20
        # A new version directory, then load: every following answer comes from it.
        shutil.copytree(repo / NAME / "1", repo / NAME / "2")
        assert client.post(f"/v2/repository/models/{NAME}/load").status_code == 200
        answers = [predict(client) for _ in range(50)]
        assert [(r.status_code, r.json()["version"]) for r in answers] == [(200, 2)] * 50
        # A broken version: every worker keeps serving the old copies, and the call says why.
        broken = repo / NAME / "3"
        shutil.copytree(repo / NAME / "2", broken)
        (broken / "model.onnx").write_bytes(b"not onnx")
        r = client.post(f"/v2/repository/models/{NAME}/load")
        assert r.status_code == 400, r.text
        assert "v3" in r.json()["error"] and "previous version keeps serving" in r.json()["error"]
        assert {predict(client).json()["version"] for _ in range(30)} == {2}
        assert all(m["state"] == "READY" for m in index(client) if m["version"] == "2")


def test_one_scrape_tells_the_whole_servers_truth(repo, serve):
    srv = serve(2)
    with httpx.Client(base_url=srv.url, timeout=30) as client:
        for _ in range(40):
            assert predict(client).status_code == 200
        totals = [requests_total(client) for _ in range(10)]
        assert totals == [40.0] * 10
        text = client.get("/metrics").text
        counts = re.findall(rf'^rnnserve_request_latency_seconds_count\{{.*model="{NAME}".*\}} (\S+)$', text, re.M)
        assert sum(map(float, counts)) == 40.0
        assert re.search(r"^rnnserve_models_loaded (\S+)$", text, re.M).group(1) == "1.0"


def test_a_version_copied_in_is_served_by_every_worker_within_two_polls(repo, serve):
    srv = serve(2, "--repository-poll-s", "0.5")
    with httpx.Client(base_url=srv.url, timeout=30) as client:
        staged = repo / f".{NAME}-2"  # copied beside, then renamed in: a version appears whole
        shutil.copytree(repo / NAME / "1", staged)
        os.rename(staged, repo / NAME / "2")
        # two poll periods, and the load and warm-up of a tiny package
        wait_until(lambda: all(predict(client).json()["version"] == 2 for _ in range(20)), 2 * 0.5 + 3,
                   "every worker to serve the new version")
        shutil.rmtree(repo / NAME / "2")
        wait_until(lambda: {predict(client).json()["version"] for _ in range(20)} == {1}, 2 * 0.5 + 3,
                   "every worker to serve version 1 again (two poll periods and the reload)")


def test_a_worker_killed_under_load_is_replaced_and_only_its_requests_fail(repo, serve):
    srv = serve(3)
    results: list[int] = []
    stop = threading.Event()

    def load():
        with httpx.Client(base_url=srv.url, timeout=30) as client:
            while not stop.is_set() and len(results) < 3000:
                try:
                    results.append(predict(client).status_code)
                except httpx.HTTPError:
                    results.append(0)

    threads = [threading.Thread(target=load) for _ in range(4)]
    for t in threads:
        t.start()
    wait_until(lambda: len(results) >= 100, what="the load to run")
    victim = srv.worker_pids()[0]
    os.kill(victim, signal.SIGKILL)
    killed = time.monotonic()
    srv.wait_workers(3, timeout=30)  # the replacement has loaded the repository
    replaced = time.monotonic() - killed
    served = len(results)
    wait_until(lambda: len(results) >= served + 100, what="the load to go on with the replacement")
    stop.set()
    for t in threads:
        t.join(timeout=30)
    failed = sum(code != 200 for code in results)
    assert failed <= 4, (failed, len(results))  # at most the four clients' requests in flight there
    with httpx.Client(base_url=srv.url, timeout=30) as client:
        assert client.get("/health/ready").status_code == 200
        # counters of the dead worker stay: the total is every request answered (less those in flight)
        assert len(results) - failed - 4 <= requests_total(client) <= len(results)
    assert replaced < 30  # the figures: bench/worker_death.py


def test_control_state_is_removed_when_the_server_stops(repo, serve):
    srv = serve(2)
    state = next(Path("/tmp").glob(f"rnnserve-*/workers/{srv.worker_pids()[0]}.json")).parent.parent
    assert (state / "metrics").is_dir() and (state / "workers").is_dir()
    srv.stop()
    assert not state.exists()


def test_control_of_names_gone_failed_or_unknown(repo, serve):
    srv = serve(2)
    with httpx.Client(base_url=srv.url, timeout=30) as client:
        # a model whose versions all fail: 400, then an unload forgets it on every worker
        broken = repo / "broken" / "1"
        shutil.copytree(repo / NAME / "1", broken)
        (broken / "model.onnx").write_bytes(b"not onnx")
        r = client.post("/v2/repository/models/broken/load")
        assert r.status_code == 400 and str(repo) not in r.text  # the repository's path is the server's
        assert client.post("/v2/repository/models/broken/unload").status_code == 200
        rows = [[(m["state"], m["reason"]) for m in index(client) if m["name"] == "broken"] for _ in range(10)]
        assert rows == [[("UNAVAILABLE", "not loaded")]] * 10  # on disk, but no longer a failure anywhere
        assert client.post("/v1/models/broken/predict", json={"text": "x"}).status_code == 404
        # a model removed from disk: a load says so and unloads it everywhere; listings still answer
        shutil.rmtree(repo / NAME)
        assert client.post(f"/v2/repository/models/{NAME}/load").status_code == 404
        assert [predict(client).status_code for _ in range(20)] == [404] * 20
        assert all(client.get("/v1/models").status_code == 200 for _ in range(10))
        # names that cannot be models: 404 at once, nothing published for the workers
        for name in ("y" * 300, "never-there"):
            r = client.post(f"/v2/repository/models/{name}/load")
            assert r.status_code == 404 and len(r.content) < 300, r.text
        state = next(Path("/tmp").glob(f"rnnserve-*/workers/{srv.worker_pids()[0]}.json")).parent.parent
        assert "never-there" not in (state / "desired.json").read_text()
