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

from tests.conftest import Server

NAME = "sentiment-lstm"


@pytest.fixture()
def repo(tmp_path, model_repo) -> Path:
    shutil.copytree(model_repo / NAME, tmp_path / "models" / NAME)
    return tmp_path / "models"


def workers(srv: Server) -> list[int]:
    """The server's live workers that have loaded the repository (each writes its status file then)."""
    return [int(p.stem) for p in Path("/tmp").glob("rnnserve-*/workers/*.json") if _child_of(int(p.stem), srv.proc.pid)]


def wait_for_workers(srv: Server, count: int, timeout: float = 90) -> list[int]:
    deadline = time.monotonic() + timeout
    while len(found := workers(srv)) < count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{count} workers did not load within {timeout} s")
        time.sleep(0.02)
    return found


def _child_of(pid: int, parent: int) -> bool:
    """A live (not zombie) child process of `parent`."""
    try:
        state, ppid = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[:2]
    except OSError:
        return False
    return int(ppid) == parent and state != "Z"


def predict(client: httpx.Client, text: str = "a fine film") -> httpx.Response:
    return client.post(f"/v1/models/{NAME}/predict", json={"text": text})


def index(client: httpx.Client) -> list[dict]:
    return client.post("/v2/repository/index").json()


def requests_total(client: httpx.Client, endpoint: str = "/v1/models/{name}/predict") -> float:
    text = client.get("/metrics").text
    return sum(float(v) for labels, v in re.findall(r"^rnnserve_requests_total\{(.*)\} (\S+)$", text, re.M)
               if f'model="{NAME}"' in labels and f'endpoint="{endpoint}"' in labels)


def test_load_unload_and_reload_reach_every_worker(repo):
    srv = Server(repo, "--workers", "2")
    try:
        srv.wait_ready()
        wait_for_workers(srv, 2)
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
    finally:
        srv.stop()


def test_one_scrape_tells_the_whole_servers_truth(repo):
    srv = Server(repo, "--workers", "2")
    try:
        srv.wait_ready()
        wait_for_workers(srv, 2)
        with httpx.Client(base_url=srv.url, timeout=30) as client:
            for _ in range(40):
                assert predict(client).status_code == 200
            totals = [requests_total(client) for _ in range(10)]
            assert totals == [40.0] * 10
            text = client.get("/metrics").text
            counts = re.findall(rf'^rnnserve_request_latency_seconds_count\{{.*model="{NAME}".*\}} (\S+)$', text, re.M)
            assert sum(map(float, counts)) == 40.0
            assert re.search(r"^rnnserve_models_loaded (\S+)$", text, re.M).group(1) == "1.0"
    finally:
        srv.stop()


def test_a_version_copied_in_is_served_by_every_worker_within_two_polls(repo):
    srv = Server(repo, "--workers", "2", "--repository-poll-s", "0.5")
    try:
        srv.wait_ready()
        wait_for_workers(srv, 2)
        with httpx.Client(base_url=srv.url, timeout=30) as client:
            staged = repo / f".{NAME}-2"  # copied beside, then renamed in: a version appears whole
            shutil.copytree(repo / NAME / "1", staged)
            os.rename(staged, repo / NAME / "2")
            copied = time.monotonic()
            while not all(predict(client).json()["version"] == 2 for _ in range(20)):
                assert time.monotonic() - copied < 10, "the new version was not served everywhere in time"
            shutil.rmtree(repo / NAME / "2")
            time.sleep(1.5)  # two poll periods and the reload
            assert {predict(client).json()["version"] for _ in range(20)} == {1}
    finally:
        srv.stop()


def test_a_worker_killed_under_load_is_replaced_and_only_its_requests_fail(repo):
    srv = Server(repo, "--workers", "3")
    try:
        srv.wait_ready()
        wait_for_workers(srv, 3)
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
        time.sleep(1.0)
        victim = workers(srv)[0]
        os.kill(victim, signal.SIGKILL)
        killed = time.monotonic()
        wait_for_workers(srv, 3, timeout=30)  # the replacement has loaded the repository
        replaced = time.monotonic() - killed
        time.sleep(0.5)
        stop.set()
        for t in threads:
            t.join(timeout=30)
        failed = sum(code != 200 for code in results)
        assert failed <= 4, (failed, len(results))  # at most the four clients' requests in flight there
        with httpx.Client(base_url=srv.url, timeout=30) as client:
            assert client.get("/health/ready").status_code == 200
            # counters of the dead worker stay: the total is every request answered (less those in flight)
            assert len(results) - failed - 4 <= requests_total(client) <= len(results)
        print(f"\nSIGKILL of one of 3 workers: {failed} of {len(results)} requests failed; replacement ready "
              f"after {replaced:.2f} s")
        assert replaced < 30
    finally:
        srv.stop()


def test_control_state_is_removed_when_the_server_stops(repo):
    srv = Server(repo, "--workers", "2")
    try:
        srv.wait_ready()
        wait_for_workers(srv, 2)
        state = next(Path("/tmp").glob(f"rnnserve-*/workers/{workers(srv)[0]}.json")).parent.parent
        assert (state / "metrics").is_dir() and (state / "desired.json").exists() is False
    finally:
        srv.stop()
    assert not state.exists()
