"""Auth, limits, path traversal, model control without restart, graceful shutdown."""

import asyncio
import json
import shutil
import signal
import threading
import time

import httpx
import pytest

from rnnserve.service.core.package import seal
from tests.conftest import Server, real_reviews


def test_auth_off_by_default(api):
    assert api.get("/v1/models").status_code == 200


@pytest.fixture(scope="module")
def secured(model_repo, tmp_path_factory):
    keys_file = tmp_path_factory.mktemp("keys") / "keys.txt"
    keys_file.write_text("# one key per line\nfile-key\n")
    srv = Server(model_repo, "--no-metrics-public", "--api-keys-file", str(keys_file),
                 env={"RNNSERVE_API_KEYS": "env-key-1,env-key-2"})
    srv.wait_ready()
    yield srv
    srv.log = srv.stop()


@pytest.mark.parametrize("headers,status", [
    ({}, 401),
    ({"Authorization": "Bearer wrong"}, 401),
    ({"X-API-Key": ""}, 401),
    ({"Authorization": "Basic env-key-1"}, 401),
    ({"Authorization": "Bearer env-key-1"}, 200),
    ({"authorization": "bearer env-key-2"}, 200),
    ({"X-API-Key": "file-key"}, 200),
])
def test_auth_on(secured, headers, status):
    r = httpx.post(f"{secured.url}/v1/models/sentiment-lstm/predict", json={"text": "fine"}, headers=headers)
    assert r.status_code == status
    if status == 401:
        assert r.json()["error"]["code"] == "unauthorized" and r.headers["www-authenticate"] == "Bearer"


def test_api_key_with_trailing_spaces_is_trimmed_as_bearer_keys_are(secured):
    import socket

    for header in (b"X-API-Key: file-key   ", b"Authorization: Bearer file-key   "):
        with socket.create_connection(("127.0.0.1", secured.port), timeout=10) as sock:
            sock.sendall(b"GET /v1/models HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + header + b"\r\n\r\n")
            answer = b"".join(iter(lambda: sock.recv(65536), b""))
        assert answer.startswith(b"HTTP/1.1 200"), (header, answer[:200])


def test_auth_exemptions_and_protected_surfaces(secured):
    for path in ("/health/live", "/health/ready", "/v2/health/live", "/v2/health/ready", "/openapi.json"):
        assert httpx.get(secured.url + path).status_code == 200
    for path in ("/metrics", "/v1/models", "/v2/models/sentiment-lstm"):
        assert httpx.get(secured.url + path).status_code == 401
    r = httpx.post(f"{secured.url}/v2/repository/index")
    assert r.status_code == 401 and isinstance(r.json()["error"], str)
    assert httpx.get(f"{secured.url}/metrics", headers={"X-API-Key": "file-key"}).status_code == 200


def test_keys_never_logged(secured):
    httpx.get(f"{secured.url}/v1/models", headers={"X-API-Key": "env-key-1"})
    httpx.get(f"{secured.url}/v1/models", headers={"X-API-Key": "not-a-key-xyz"})
    secured.log = secured.stop()
    for secret in ("env-key-1", "env-key-2", "file-key", "not-a-key-xyz"):
        assert secret not in secured.log


@pytest.mark.parametrize("path", [
    "/v1/models/../../etc/passwd/predict",
    "/v1/models/..%2F..%2Fetc/predict",
    "/v1/models/%2e%2e/predict",
    "/v1/models/sentiment-lstm/versions/..%2F1/predict",
    "/v1/models/sentiment-lstm/versions/-1/predict",
    "/v2/models/..%2Fsentiment-lstm/infer",
])
def test_path_traversal_is_not_found(api, path):
    r = api.post(path, json={"text": "x"})
    assert r.status_code == 404


@pytest.mark.parametrize("name", ["..", "..%2F..%2Ftmp", ".hidden", "a..b"])
def test_repository_load_refuses_paths_outside(api, name):
    assert api.post(f"/v2/repository/models/{name}/load").status_code == 404


def test_score_upload_limit(model_repo):
    srv = Server(model_repo, "--max-score-bytes", "1000")
    try:
        srv.wait_ready()
        url = f"{srv.url}/v1/models/sentiment-lstm/score"
        r = httpx.post(url, content=b"great\n" * 500, headers={"content-type": "text/plain"})
        assert r.status_code == 413 and "1000 bytes" in r.json()["error"]["message"]

        def chunks():  # no Content-Length: the limit is enforced as the body streams in
            for _ in range(50):
                yield b"great fun\n" * 10

        r = httpx.post(url, content=chunks(), headers={"content-type": "text/plain"})
        last = json.loads(r.text.splitlines()[-1])
        assert "exceeds the limit of 1000 bytes" in last["error"]
    finally:
        srv.stop()


@pytest.fixture()
def live_repo(model_repo, tmp_path):
    repo = tmp_path / "models"
    shutil.copytree(model_repo, repo)
    return repo


def hammer(url: str, stop: threading.Event, results: list, texts: list[str]) -> None:
    with httpx.Client(timeout=30) as client:
        i = 0
        while not stop.is_set() and i < 5000:  # bounded
            r = client.post(f"{url}/v1/models/sentiment-lstm/predict", json={"text": texts[i % len(texts)]})
            results.append((r.status_code, r.json().get("version")))
            i += 1


def test_reload_and_unload_under_traffic_fail_no_request(live_repo):
    srv = Server(live_repo)
    texts, _ = real_reviews(10)
    try:
        srv.wait_ready()
        stop, results = threading.Event(), []
        workers = [threading.Thread(target=hammer, args=(srv.url, stop, results, texts)) for _ in range(4)]
        for w in workers:
            w.start()
        # a new version appears and is loaded, then reloaded twice, while the other model comes and goes
        shutil.copytree(live_repo / "sentiment-lstm" / "1", live_repo / "sentiment-lstm" / "2")
        meta = live_repo / "sentiment-lstm" / "2" / "metadata.json"
        meta.write_text(json.dumps(json.loads(meta.read_text()) | {"version": 2}))
        seal(meta.parent)
        for _ in range(3):
            assert httpx.post(f"{srv.url}/v2/repository/models/sentiment-lstm/load", timeout=60).status_code == 200
        assert httpx.post(f"{srv.url}/v2/repository/models/topics-gru/unload").status_code == 200
        assert httpx.post(f"{srv.url}/v1/models/topics-gru/predict", json={"text": "x"}).status_code == 404
        assert httpx.post(f"{srv.url}/v2/repository/models/topics-gru/load", timeout=60).status_code == 200
        stop.set()
        for w in workers:
            w.join()
        assert len(results) > 50
        assert {status for status, _ in results} == {200}
        assert results[-1][1] == 2  # the newest version serves after the load
        index = httpx.post(f"{srv.url}/v2/repository/index").json()
        assert {(m["name"], m["version"], m["state"]) for m in index} == {
            ("sentiment-lstm", "1", "READY"), ("sentiment-lstm", "2", "READY"), ("topics-gru", "1", "READY")}
    finally:
        srv.stop()


def test_corrupt_reload_keeps_the_old_version(live_repo):
    srv = Server(live_repo)
    try:
        srv.wait_ready()
        with open(live_repo / "topics-gru" / "1" / "model.onnx", "ab") as fh:
            fh.write(b"garbage")
        r = httpx.post(f"{srv.url}/v2/repository/models/topics-gru/load")
        assert r.status_code == 400 and "sha256" in r.json()["error"] and "keeps serving" in r.json()["error"]
        r = httpx.post(f"{srv.url}/v1/models/topics-gru/predict", json={"text": "still here"})
        assert r.status_code == 200
        index = {(m["name"], m["version"]): m for m in httpx.post(f"{srv.url}/v2/repository/index").json()}
        assert index[("topics-gru", "1")]["state"] == "READY"
        assert httpx.post(f"{srv.url}/v2/repository/models/nope/load").status_code == 404
    finally:
        srv.stop()


def test_sigterm_finishes_requests_in_flight(model_repo):
    srv = Server(model_repo)
    try:
        srv.wait_ready()
        texts, _ = real_reviews(128)

        async def main():
            async with httpx.AsyncClient(base_url=srv.url, timeout=60,
                                         limits=httpx.Limits(max_connections=32)) as client:
                tasks = [asyncio.create_task(client.post("/v1/models/sentiment-lstm/predict", json={"texts": texts}))
                         for _ in range(32)]
                await asyncio.sleep(0.3)  # all 32 are on the wire and queued
                srv.proc.send_signal(signal.SIGTERM)
                return await asyncio.gather(*tasks, return_exceptions=True)

        responses = asyncio.run(main())
        assert [getattr(r, "status_code", r) for r in responses] == [200] * 32
        assert all(len(r.json()["predictions"]) == 256 for r in responses)
        assert srv.proc.wait(timeout=30) == 0
    finally:
        srv.stop()

def test_two_workers_serve_and_stop_cleanly(model_repo):
    srv = Server(model_repo, "--workers", "2")
    try:
        srv.wait_ready()
        # Readiness is one worker's (issue 24): the other may still be loading, and answers 503 until it has. Both
        # have loaded once 20 requests in a row (new connections, spread over the workers) are answered.
        deadline, answered = time.monotonic() + 60, 0
        while answered < 20 and time.monotonic() < deadline:
            r = httpx.get(f"{srv.url}/v1/models/sentiment-lstm")
            answered = answered + 1 if r.status_code == 200 else 0
        assert r.json()["threads"] == max(1, len(__import__("os").sched_getaffinity(0)) // 2)
        assert httpx.post(f"{srv.url}/v1/models/sentiment-lstm/predict", json={"text": "fine"}).status_code == 200
        srv.proc.send_signal(signal.SIGTERM)
        assert srv.proc.wait(timeout=60) == 0
    finally:
        srv.stop()

def test_granian_serves_logs_as_json_and_stops_cleanly(model_repo):
    srv = Server(model_repo, "--server", "granian", "--workers", "2", "--access-log")
    try:
        srv.wait_ready()
        deadline = time.monotonic() + 30
        while True:  # readiness answered from one worker; the other may still be loading (503, Retry-After)
            r = httpx.post(f"{srv.url}/v1/models/sentiment-lstm/predict", json={"text": "fine"},
                           headers={"X-Request-ID": "g-1"})
            if r.status_code != 503 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert r.status_code == 200 and r.headers["x-request-id"] == "g-1"
        srv.proc.send_signal(signal.SIGTERM)
        assert srv.proc.wait(timeout=60) == 0
    finally:
        log = srv.stop()
    lines = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    assert any(e["logger"].startswith("_granian") for e in lines)  # Granian's own lines in the service's format
    assert any(e.get("request_id") == "g-1" and e.get("path") == "/v1/models/sentiment-lstm/predict" for e in lines)
