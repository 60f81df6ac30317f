"""Payload logging (service/observe/): requests over /v1, V2 over HTTP and gRPC (tritonclient) and file scoring,
refused ones included, become CloudEvents in the file sink, read back with the cloudevents SDK; an HTTP sink that
hangs never holds an answer, and what could not be queued is counted in /metrics."""

from __future__ import annotations

import hashlib
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import tritonclient.grpc as triton
from cloudevents.http import from_http, from_json

from tests.conftest import free_port, in_process, wait_ready, wait_until

REQUEST, RESPONSE = "org.kubeflow.serving.inference.request", "org.kubeflow.serving.inference.response"
FAILURE = "io.rnnserve.inference.failure"
TEXTS = ["a moving film", "dull and far too long"]


def events(path) -> list:
    return [from_json(line) for line in path.read_text().splitlines()] if path.exists() else []


def by_id(path, request_id: str) -> dict:
    return {e["type"]: e for e in events(path) if e["id"] == request_id}


def text_input(texts: list[str]) -> triton.InferInput:
    tensor = triton.InferInput("text", [len(texts)], "BYTES")
    tensor.set_data_from_numpy(np.array([t.encode() for t in texts], dtype=object))
    return tensor


@pytest.fixture(scope="module")
def logged(model_repo, tmp_path_factory):
    sink = tmp_path_factory.mktemp("payload") / "events.jsonl"
    port = free_port()
    with in_process(model_repo, grpc_port=port, payload_log=True, payload_log_rate=1.0,
                    payload_log_rates="topics-gru=0", payload_log_text="whole", payload_log_sink=str(sink)) as client:
        wait_ready(client)
        yield client, sink, triton.InferenceServerClient(f"127.0.0.1:{port}")


def test_v1_request_and_response_events(logged):
    client, sink, _ = logged
    r = client.post("/v1/models/sentiment-lstm/predict", json={"texts": TEXTS, "return_probabilities": True},
                    headers={"X-Request-ID": "v1-ok"})
    assert r.status_code == 200
    wait_until(lambda: len(by_id(sink, "v1-ok")) == 2, what="both events")
    found = by_id(sink, "v1-ok")
    request, response = found[REQUEST], found[RESPONSE]
    assert request["inferenceservicename"] == "sentiment-lstm" and request["endpoint"] == "v1"
    assert request["datacontenttype"] == "application/json" and request["specversion"] == "1.0"
    assert request.data["inputs"][0] == {"name": "text", "datatype": "BYTES", "shape": [2], "data": TEXTS}
    assert response.data["model_name"] == "sentiment-lstm" and response.data["model_version"] == "1"
    probabilities = response.data["outputs"][0]
    assert probabilities["name"] == "probabilities" and probabilities["shape"] == [2, 2]
    served = [p["probabilities"]["positive"] for p in r.json()["predictions"]]
    assert np.allclose(probabilities["data"][1::2], served, atol=1e-6)
    assert response.data["outputs"][1]["data"] == [p["label"] for p in r.json()["predictions"]]


def test_v2_http_and_grpc_events_and_their_refusals(logged):
    client, sink, grpc_client = logged
    body = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": [TEXTS[0]]}]}
    assert client.post("/v2/models/sentiment-lstm/infer", json=body, headers={"X-Request-ID": "v2-ok"}).is_success
    grpc_client.infer("sentiment-lstm", [text_input(TEXTS)], request_id="grpc-ok",
                      headers={"x-request-id": "grpc-ok"})
    bad = {"inputs": [{"name": "text", "datatype": "FP32", "shape": [1], "data": [1.0]}]}
    assert client.post("/v2/models/sentiment-lstm/infer", json=bad, headers={"X-Request-ID": "v2-bad"}).status_code \
        == 422
    assert client.post("/v1/models/nope/predict", json={"texts": ["x"]},
                       headers={"X-Request-ID": "v1-404"}).status_code == 404
    with pytest.raises(triton.InferenceServerException):
        grpc_client.infer("nope", [text_input(TEXTS)], headers={"x-request-id": "grpc-404"})
    wanted = {"v2-ok": {REQUEST, RESPONSE}, "grpc-ok": {REQUEST, RESPONSE}, "v2-bad": {FAILURE}, "v1-404": {FAILURE},
              "grpc-404": {FAILURE}}
    wait_until(lambda: all(set(by_id(sink, rid)) == types for rid, types in wanted.items()), 5,
               what=f"the events: {[(e['id'], e['type']) for e in events(sink)]}")
    assert by_id(sink, "grpc-ok")[REQUEST].data["inputs"][0]["data"] == TEXTS
    assert by_id(sink, "grpc-ok")[REQUEST]["endpoint"] == "v2"
    assert by_id(sink, "v2-ok")[RESPONSE].data["outputs"][0]["shape"] == [1, 2]
    refused = by_id(sink, "v2-bad")[FAILURE].data
    assert refused["status"] == 422 and refused["code"] and "text" in refused["message"]
    missing = by_id(sink, "grpc-404")[FAILURE].data
    assert missing["status"] == 404 and missing["model_name"] == "nope" and "nope" in missing["message"]
    assert by_id(sink, "v1-404")[FAILURE].data["status"] == 404


def test_an_unsampled_model_logs_only_its_failures(logged):
    client, sink, _ = logged
    ok = client.post("/v1/models/topics-gru/predict", json={"texts": TEXTS}, headers={"X-Request-ID": "rate-0"})
    too_long = {"texts": ["x" * 100_001]}
    refused = client.post("/v1/models/topics-gru/predict", json=too_long, headers={"X-Request-ID": "rate-0-bad"})
    assert ok.status_code == 200 and refused.status_code == 413
    wait_until(lambda: FAILURE in by_id(sink, "rate-0-bad"), what="the failure event")
    assert by_id(sink, "rate-0") == {}  # queued before the failure, so written by now if at all


def test_file_scoring_logs_its_rows_per_block(logged):
    client, sink, _ = logged
    lines = "".join(f'{{"text": "review number {i}"}}\n' for i in range(5))
    r = client.post("/v1/models/sentiment-lstm/score", content=lines, headers={"content-type": "application/x-ndjson",
                                                                                "X-Request-ID": "file"})
    assert r.status_code == 200
    wait_until(lambda: any(e["id"].startswith("file-") and e["type"] == RESPONSE for e in events(sink)))
    blocks = [e for e in events(sink) if re.fullmatch(r"file-\d+", e["id"])]
    assert {e["endpoint"] for e in blocks} == {"score"}
    texts = [t for e in blocks if e["type"] == REQUEST for t in e.data["inputs"][0]["data"]]
    assert sorted(texts) == sorted(f"review number {i}" for i in range(5))


def test_text_as_a_hash_or_not_at_all(model_repo, tmp_path):
    for mode in ("sha256", "none"):
        sink = tmp_path / f"{mode}.jsonl"
        with in_process(model_repo, payload_log=True, payload_log_rate=1.0, payload_log_text=mode,
                        payload_log_mode="request", payload_log_sink=str(sink)) as client:
            wait_ready(client)
            client.post("/v1/models/sentiment-lstm/predict", json={"texts": TEXTS}, headers={"X-Request-ID": mode})
            wait_until(lambda: REQUEST in by_id(sink, mode), what="the request event")  # noqa: B023
        assert set(by_id(sink, mode)) == {REQUEST}  # mode "request": no response events
        tensor = by_id(sink, mode)[REQUEST].data["inputs"][0]
        if mode == "sha256":
            assert tensor["data"] == [hashlib.sha256(t.encode()).hexdigest() for t in TEXTS]
        else:
            assert "data" not in tensor and tensor["shape"] == [2]
        assert not any(t in sink.read_text() for t in TEXTS)


class HangingSink(BaseHTTPRequestHandler):
    """A CloudEvents receiver that holds every POST until the test releases it."""

    release = threading.Event()
    received: list = []

    def do_POST(self):  # noqa: N802 - http.server's name
        body = self.rfile.read(int(self.headers["content-length"]))
        self.release.wait()
        self.received.append(from_http(dict(self.headers), body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


def counted(client, outcome: str) -> float:
    found = re.search(rf'rnnserve_payload_events_total\{{outcome="{outcome}"\}} (\S+)', client.get("/metrics").text)
    return float(found.group(1)) if found else 0.0


def test_an_http_sink_that_is_down_counts_failed_sends(model_repo):
    with in_process(model_repo, payload_log=True, payload_log_rate=1.0,
                    payload_log_sink=f"http://127.0.0.1:{free_port()}/events") as client:
        wait_ready(client)
        assert client.post("/v1/models/sentiment-lstm/predict", json={"texts": TEXTS}).status_code == 200
        wait_until(lambda: counted(client, "failed") == 2, what="two failed sends")
        assert counted(client, "sent") == 0


def test_a_hanging_http_sink_never_holds_an_answer_and_drops_are_counted(model_repo):
    receiver = ThreadingHTTPServer(("127.0.0.1", 0), HangingSink)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{receiver.server_port}/events"
    try:
        with in_process(model_repo, payload_log=True, payload_log_rate=1.0, payload_log_queue=2,
                        payload_log_sink=url) as client:
            wait_ready(client)
            answered = []

            def send():
                for i in range(12):
                    r = client.post("/v1/models/sentiment-lstm/predict", json={"texts": TEXTS},
                                    headers={"X-Request-ID": f"hang-{i}"})
                    answered.append(r.status_code)

            sender = threading.Thread(target=send)
            sender.start()
            sender.join(60)  # a deadline only: answers that waited for the sink would never come
            assert answered == [200] * 12
            assert counted(client, "dropped") >= 12 - 2 - 1  # the queue holds 2, the sender thread 1
            HangingSink.release.set()
            wait_until(lambda: len(HangingSink.received) >= 2, what="the held events")
        event = HangingSink.received[0]
        assert event["type"] == REQUEST and event["id"] == "hang-0", event
        assert event.data["inputs"][0]["data"] == [hashlib.sha256(t.encode()).hexdigest() for t in TEXTS]  # default
    finally:
        HangingSink.release.set()
        receiver.shutdown()


def test_the_file_sink_rotates_and_two_writers_share_it(tmp_path):
    """Two workers' sinks on one file: every line whole, the file rotated at its size, BACKUPS files kept."""
    from cloudevents.http import CloudEvent

    from rnnserve.service.observe.sinks import FileSink

    path = tmp_path / "events.jsonl"
    writers = [FileSink(path, max_bytes=2048, backups=2) for _ in range(2)]
    for i in range(60):
        event = CloudEvent({"type": REQUEST, "source": "test", "id": f"e{i}"}, {"n": i, "pad": "x" * 100})
        assert writers[i % 2].send([event]) == 0
    for writer in writers:
        writer.close()
    files = [path, path.with_name("events.jsonl.1"), path.with_name("events.jsonl.2")]
    assert all(f.exists() for f in files) and not path.with_name("events.jsonl.3").exists()
    ids = [from_json(line)["id"] for f in reversed(files) for line in f.read_text().splitlines()]
    assert all(f.stat().st_size <= 2048 for f in files)
    assert ids == [f"e{i}" for i in range(60 - len(ids), 60)]  # in order, the newest kept


def test_two_workers_share_the_file_and_the_counts(model_repo, tmp_path):
    """Each worker queues and writes its own events into the one file; /metrics counts the server's."""
    import httpx

    from tests.conftest import Server

    sink = tmp_path / "events.jsonl"
    srv = Server(model_repo, "--workers", "2", env={"RNNSERVE_PAYLOAD_LOG": "true", "RNNSERVE_PAYLOAD_LOG_RATE": "1",
                                                    "RNNSERVE_PAYLOAD_LOG_SINK": str(sink)})
    try:
        srv.wait_ready()
        with httpx.Client(base_url=srv.url) as client:  # one connection per request: both workers take some
            for i in range(20):
                r = httpx.post(f"{srv.url}/v1/models/sentiment-lstm/predict", json={"texts": TEXTS},
                               headers={"X-Request-ID": f"w{i}"})
                assert r.status_code == 200

            def sent() -> float:
                found = re.search(r'rnnserve_payload_events_total\{outcome="sent"\} (\S+)', client.get("/metrics").text)
                return float(found.group(1)) if found else 0.0

            wait_until(lambda: sent() == 40, what="40 events counted as sent")
        found = events(sink)
        assert sorted(e["id"] for e in found) == sorted(f"w{i}" for i in range(20) for _ in range(2))
        assert len({e["source"] for e in found}) == 1
    finally:
        srv.stop()
