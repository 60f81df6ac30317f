"""The V2 protocol over gRPC against real servers: tritonclient.grpc (raw tensors), grpcio's own client with typed
contents (as grpcurl and KServe's examples send them), the health service, errors with their status codes,
API keys, the repository, the stream, message size, several workers, and graceful shutdown."""

from __future__ import annotations

import queue
import signal
import time
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException

from rnnserve.service.grpc import messages
from tests.conftest import ROOT, Server, free_port, port_open, wait_until

TEXTS = ["A moving, beautifully acted film.", "Dull, predictable and far too long.", "café ☕ “fine”"]


@pytest.fixture(scope="module")
def server():
    srv = Server(ROOT / "models", "--api-keys", "secret-key")
    try:
        srv.wait_ready(120)
        yield srv
    finally:
        srv.stop()


def client(srv) -> triton.InferenceServerClient:
    return triton.InferenceServerClient(srv.grpc)


KEY = {"authorization": "Bearer secret-key"}


def text_input(texts: list[str]) -> triton.InferInput:
    tensor = triton.InferInput("text", [len(texts)], "BYTES")
    tensor.set_data_from_numpy(np.array([t.encode() for t in texts], dtype=object))
    return tensor


def sequence_input(x: np.ndarray) -> triton.InferInput:
    tensor = triton.InferInput("sequences", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    return tensor


def http_probabilities(srv, model: str, texts: list[str]) -> np.ndarray:
    r = httpx.post(f"{srv.url}/v2/models/{model}/infer", headers=KEY, json={
        "inputs": [{"name": "text", "datatype": "BYTES", "shape": [len(texts)], "data": texts}]})
    assert r.status_code == 200, r.text
    out = next(o for o in r.json()["outputs"] if o["name"] == "probabilities")
    return np.array(out["data"], np.float32).reshape(out["shape"])


def test_tritonclient_metadata_and_text_inference_equal_http(server):
    c = client(server)
    assert c.is_server_live(headers=KEY) and c.is_server_ready(headers=KEY)
    assert c.is_model_ready("imdb-lstm-small", headers=KEY)
    meta = c.get_model_metadata("imdb-lstm-small", headers=KEY)
    assert meta.inputs[0].name == "text" and [o.name for o in meta.outputs] == ["probabilities", "label"]
    assert "model_repository" in c.get_server_metadata(headers=KEY).extensions
    result = c.infer("imdb-lstm-small", [text_input(TEXTS)], headers=KEY, request_id="r-1")
    assert result.get_response().id == "r-1"
    expected = http_probabilities(server, "imdb-lstm-small", TEXTS)
    assert np.array_equal(result.as_numpy("probabilities"), expected)
    assert [x.decode() for x in result.as_numpy("label").ravel()] == [["negative", "positive"][i]
                                                                     for i in expected.argmax(1)]
    only = c.infer("imdb-lstm-small", [text_input(TEXTS[:1])], headers=KEY,
                   outputs=[triton.InferRequestedOutput("label")])
    assert only.as_numpy("probabilities") is None and len(only.as_numpy("label")) == 1


def test_numeric_sequences(server):
    c = client(server)
    meta = c.get_model_metadata("waves-lstm-tutorial", headers=KEY)
    steps, features = meta.inputs[0].shape[1:]
    x = np.random.default_rng(0).normal(size=(4, steps, features)).astype(np.float32)
    result = c.infer("waves-lstm-tutorial", [sequence_input(x)], headers=KEY)
    name = meta.outputs[0].name
    r = httpx.post(f"{server.url}/v2/models/waves-lstm-tutorial/infer", headers=KEY, json={"inputs": [
        {"name": "sequences", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}]})
    http = next(o for o in r.json()["outputs"] if o["name"] == name)
    assert np.allclose(result.as_numpy(name).ravel(), http["data"], atol=1e-6)


@pytest.mark.parametrize("call,code,message", [
    (lambda c: c.infer("no-such-model", [text_input(["x"])], headers=KEY), "NOT_FOUND", "not found"),
    (lambda c: c.infer("imdb-lstm-small", [text_input(["x"] * 257)], headers=KEY), "RESOURCE_EXHAUSTED",
     "the limit is 256"),
    (lambda c: c.infer("imdb-lstm-small", [sequence_input(np.zeros((1, 2, 1), np.float32))], headers=KEY),
     "INVALID_ARGUMENT", "unexpected input"),
    (lambda c: c.infer("imdb-lstm-small", [text_input(["x"])]), "UNAUTHENTICATED", "API key"),
    (lambda c: c.infer("imdb-lstm-small", [text_input(["x"])], headers={"x-api-key": "wrong"}), "UNAUTHENTICATED",
     "API key"),
    (lambda c: c.infer("imdb-lstm-small", [text_input(["x"])], headers=KEY,
                       outputs=[triton.InferRequestedOutput("nope")]), "INVALID_ARGUMENT", "unknown output"),
])
def test_errors_have_the_status_code_of_the_http_status_and_its_message(server, call, code, message):
    with pytest.raises(InferenceServerException) as err:
        call(client(server))
    assert err.value.status() == f"StatusCode.{code}" and message in err.value.message()
    assert client(server).is_server_live(headers=KEY)  # and the server goes on


def grpc_call(srv, method: str, request, response_type, metadata=(("x-api-key", "secret-key"),)):
    with grpc.insecure_channel(srv.grpc) as channel:
        rpc = channel.unary_unary(method, request_serializer=type(request).SerializeToString,
                                  response_deserializer=response_type.FromString)
        return rpc(request, metadata=metadata, timeout=30)


def test_typed_contents_in_and_out_as_grpcurl_sends_them(server):
    request = messages.message("ModelInferRequest")(model_name="imdb-lstm-small", id="typed")
    tensor = request.inputs.add(name="text", datatype="BYTES", shape=[len(TEXTS)])
    tensor.contents.bytes_contents.extend(t.encode() for t in TEXTS)
    response = grpc_call(server, "/inference.GRPCInferenceService/ModelInfer", request,
                         messages.message("ModelInferResponse"))
    assert not response.raw_output_contents and response.id == "typed"
    probabilities = np.array(response.outputs[0].contents.fp32_contents, np.float32).reshape(response.outputs[0].shape)
    assert np.array_equal(probabilities, http_probabilities(server, "imdb-lstm-small", TEXTS))
    assert len(response.outputs[1].contents.bytes_contents) == len(TEXTS)
    request.raw_input_contents.append(b"\x01\x00\x00\x00x")  # both ways at once
    with pytest.raises(grpc.RpcError) as err:
        grpc_call(server, "/inference.GRPCInferenceService/ModelInfer", request, messages.message("ModelInferResponse"))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "not both" in err.value.details()


def test_health_service_for_kubernetes_probes(server):
    """grpc.health.v1 as the health-checking protocol says (grpc/grpc doc/health-checking.md): Check answers
    SERVING for the server and the inference service, NOT_FOUND for another service; Watch streams the status,
    SERVICE_UNKNOWN for a service it does not know. No API key: probes carry none."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(server.grpc) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", "inference.GRPCInferenceService"):
            answer = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=30)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as err:
            stub.Check(health_pb2.HealthCheckRequest(service="other"), timeout=30)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        watch = stub.Watch(health_pb2.HealthCheckRequest(service=""), timeout=30)
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        watch.cancel()
        unknown = stub.Watch(health_pb2.HealthCheckRequest(service="other"), timeout=30)
        assert next(unknown).status == health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
        unknown.cancel()


def test_the_stream_answers_every_request_and_stays_open_after_an_error(server):
    results: queue.Queue = queue.Queue()
    c = client(server)
    c.start_stream(callback=lambda result, error: results.put((result, error)), headers=KEY)
    try:
        for i, model in enumerate(["imdb-lstm-small", "no-such-model", "imdb-lstm-small", "imdb-lstm-small"]):
            c.async_stream_infer(model, [text_input([TEXTS[i % 3]])], request_id=str(i))
        answers = [results.get(timeout=30) for _ in range(4)]
    finally:
        c.stop_stream()
    assert [error is None for _, error in answers] == [True, False, True, True]
    assert "not found" in answers[1][1].message()
    p = [result.as_numpy("probabilities") for result, error in answers if error is None]
    expected = http_probabilities(server, "imdb-lstm-small", [TEXTS[0], TEXTS[2], TEXTS[0]])
    assert np.array_equal(np.concatenate(p), expected)


def test_repository_load_and_unload(tmp_path):
    import shutil

    models = tmp_path / "models"
    shutil.copytree(ROOT / "models" / "imdb-lstm-small", models / "imdb-lstm-small")
    srv = Server(models)
    try:
        srv.wait_ready(60)
        c = client(srv)
        assert [(m.name, m.state) for m in c.get_model_repository_index().models] == [("imdb-lstm-small", "READY")]
        c.unload_model("imdb-lstm-small")
        assert [(m.name, m.state) for m in c.get_model_repository_index().models] == [
            ("imdb-lstm-small", "UNAVAILABLE")]
        ready_only = grpc_call(srv, "/inference.GRPCInferenceService/RepositoryIndex",
                               messages.message("RepositoryIndexRequest")(ready=True),
                               messages.message("RepositoryIndexResponse"), metadata=())
        assert not ready_only.models
        with pytest.raises(InferenceServerException) as err:
            c.infer("imdb-lstm-small", [text_input(["x"])])
        assert err.value.status() == "StatusCode.NOT_FOUND"
        assert httpx.post(f"{srv.url}/v1/models/imdb-lstm-small/predict", json={"text": "x"}).status_code == 404
        c.load_model("imdb-lstm-small")
        assert c.infer("imdb-lstm-small", [text_input(["x"])]).as_numpy("probabilities").shape == (1, 2)
    finally:
        srv.stop()


def test_message_size_follows_max_body_bytes(tmp_path):
    srv = Server(ROOT / "models", "--max-body-bytes", str(6 * 1024 * 1024), "--max-text-chars", "3000000")
    try:
        srv.wait_ready(120)
        c = client(srv)
        five_mb = ["a good film " * 170_000, "dull " * 600_000]  # about 5 MB in one message: within the limit
        assert c.infer("imdb-lstm-small", [text_input(five_mb)]).as_numpy("probabilities").shape == (2, 2)
        with pytest.raises(InferenceServerException) as err:  # about 7 MB: over it
            c.infer("imdb-lstm-small", [text_input(five_mb + ["bad " * 500_000])])
        assert err.value.status() == "StatusCode.RESOURCE_EXHAUSTED"
    finally:
        srv.stop()


def test_two_workers_share_the_port_and_their_statistics(tmp_path):
    srv = Server(ROOT / "models", "--workers", "2")
    try:
        srv.wait_ready(180)
        expected = http_probabilities(srv, "imdb-lstm-small", TEXTS)
        for _ in range(8):  # a channel stays on one worker: new channels land on either
            result = client(srv).infer("imdb-lstm-small", [text_input(TEXTS)])
            assert np.array_equal(result.as_numpy("probabilities"), expected)
        # Whichever worker answers, the statistics are the server's: 9 requests of 3 texts (each worker
        # writes its figures within STATISTICS_FLUSH_S: wait for them, then ask workers in turn).
        wait_until(lambda: int(client(srv).get_inference_statistics("imdb-lstm-small", as_json=True)[
            "model_stats"][0].get("inference_count", 0)) >= 27, 10, "every worker's statistics")
        for _ in range(6):
            stats = client(srv).get_inference_statistics("imdb-lstm-small", as_json=True)["model_stats"][0]
            assert int(stats["inference_count"]) == 27
            assert int(stats["inference_stats"]["success"]["count"]) == 9
            assert httpx.get(f"{srv.url}/v2/models/imdb-lstm-small/stats").json()["model_stats"][0][
                "inference_count"] == 27
    finally:
        srv.stop()


def test_graceful_shutdown_answers_a_request_on_an_open_stream(tmp_path):
    srv = Server(ROOT / "models", "--shutdown-grace-s", "3")
    try:
        srv.wait_ready(120)
        results: queue.Queue = queue.Queue()
        c = client(srv)
        c.start_stream(callback=lambda result, error: results.put((result, error)))
        c.async_stream_infer("imdb-lstm-small", [text_input(["first"])])
        assert results.get(timeout=30)[1] is None
        srv.proc.send_signal(signal.SIGTERM)
        wait_until(lambda: not port_open(srv.port), what="the shutdown to begin (HTTP stops listening)")
        c.async_stream_infer("imdb-lstm-small", [text_input(["during the grace period"])])
        result, error = results.get(timeout=30)
        assert error is None and result.as_numpy("probabilities").shape == (1, 2)
        c.stop_stream()
        assert srv.proc.wait(timeout=30) == 0
    finally:
        srv.stop()


def test_tritonclient_and_the_server_in_one_process(tmp_path):
    """Both register `inference.*` messages: the server's live in a pool of their own, so no clash."""
    from starlette.testclient import TestClient

    from rnnserve.service.app import create_app
    from rnnserve.service.settings import Settings

    port = free_port()
    app = create_app(Settings(models_dir=Path(ROOT / "models"), grpc_port=port, access_log=False))
    with TestClient(app):
        c = triton.InferenceServerClient(f"127.0.0.1:{port}")
        wait_until(c.is_server_ready, 120, "gRPC readiness")
        assert c.infer("imdb-lstm-small", [text_input(TEXTS)]).as_numpy("probabilities").shape == (3, 2)


def test_classification_and_model_configuration_extensions_on_both_protocols(server):
    import tritonclient.http as triton_http

    expected = http_probabilities(server, "reuters-lstm", TEXTS)
    top = np.argsort(-expected, axis=1, kind="stable")[:, :3]
    http = triton_http.InferenceServerClient(server.url.removeprefix("http://"))
    answers = {}
    for protocol, c, mod in (("grpc", client(server), triton), ("http", http, triton_http)):
        tensor = mod.InferInput("text", [len(TEXTS)], "BYTES")
        tensor.set_data_from_numpy(np.array([t.encode() for t in TEXTS], dtype=object))
        result = c.infer("reuters-lstm", [tensor], headers=dict(KEY),  # tritonclient.http adds to the dict
                         outputs=[mod.InferRequestedOutput("probabilities", class_count=3)])
        answers[protocol] = result.as_numpy("probabilities")
        config = c.get_model_config("reuters-lstm", headers=KEY)
        config = config.config if protocol == "grpc" else config
        if protocol == "grpc":
            assert config.max_batch_size > 0 and config.input[0].name == "text" and config.output[0].dims == [46]
        else:
            assert config["input"] == [{"name": "text", "data_type": "TYPE_STRING", "dims": [1]}]
            assert config["output"][0] == {"name": "probabilities", "data_type": "TYPE_FP32", "dims": [46]}
            assert config["dynamic_batching"]["preferred_batch_size"] == [config["max_batch_size"]]
    assert answers["grpc"].shape == (len(TEXTS), 3) and (answers["grpc"] == answers["http"]).all()
    for row, p, classes in zip(answers["grpc"], expected, top):
        parsed = [cell.decode().split(":") for cell in row]
        assert [int(index) for _, index, _ in parsed] == classes.tolist()
        assert [abs(float(score) - p[int(index)]) < 1e-6 for score, index, _ in parsed] == [True] * 3
    request = messages.message("ModelInferRequest")(model_name="imdb-lstm-small")
    request.inputs.add(name="text", datatype="BYTES", shape=[1]).contents.bytes_contents.append(b"x")
    request.outputs.add(name="probabilities").parameters["classification"].int64_param = 0
    with pytest.raises(grpc.RpcError) as err:
        grpc_call(server, "/inference.GRPCInferenceService/ModelInfer", request, messages.message("ModelInferResponse"))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "'classification'" in err.value.details()


def test_statistics_extension_on_both_protocols(server):
    import tritonclient.http as triton_http

    c, http = client(server), triton_http.InferenceServerClient(server.url.removeprefix("http://"))

    def stats(protocol: str) -> dict:
        if protocol == "grpc":  # json_format's JSON: uint64 as strings, zero fields left out
            return c.get_inference_statistics("imdb-lstm-small", headers=KEY, as_json=True)["model_stats"][0]
        return http.get_inference_statistics("imdb-lstm-small", "1", headers=KEY)["model_stats"][0]

    def figure(stats: dict, *path: str) -> int:
        for key in path:
            stats = stats.get(key, {})
        return int(stats or 0)

    before = stats("http")
    for n in (1, 2, 3):
        c.infer("imdb-lstm-small", [text_input(TEXTS[:n])], headers=KEY)
    grpc_after, after = stats("grpc"), stats("http")
    for path in (("inference_count",), ("execution_count",), ("last_inference",),
                 ("inference_stats", "success", "count"), ("inference_stats", "compute_infer", "ns")):
        assert figure(grpc_after, *path) == figure(after, *path), path
    assert after["name"] == "imdb-lstm-small" and after["version"] == "1"
    assert figure(after, "inference_count") - figure(before, "inference_count") == 6
    assert figure(after, "execution_count") - figure(before, "execution_count") == 3
    for stat in ("success", "queue", "compute_input", "compute_infer", "compute_output"):
        assert figure(after, "inference_stats", stat, "count") - figure(before, "inference_stats", stat, "count") == 3
        assert figure(after, "inference_stats", stat, "ns") > figure(before, "inference_stats", stat, "ns")
    sizes = {row["batch_size"]: row for row in after["batch_stats"]}
    assert {1, 2, 3} <= set(sizes) and all(sizes[n]["compute_infer"]["count"] >= 1 for n in (1, 2, 3))
    assert after["last_inference"] / 1000 == pytest.approx(time.time(), abs=60)
    every = httpx.get(f"{server.url}/v2/models/stats", headers=KEY).json()["model_stats"]
    assert {"imdb-lstm-small", "reuters-lstm", "reuters-char-rnn"} <= {m["name"] for m in every}
    assert len(c.get_inference_statistics(headers=KEY).model_stats) == len(every)
    assert httpx.get(f"{server.url}/v2/models/nope/stats", headers=KEY).status_code == 404
    with pytest.raises(InferenceServerException) as err:
        c.get_inference_statistics("nope", headers=KEY)
    assert err.value.status() == "StatusCode.NOT_FOUND" and "model 'nope' not found" in err.value.message()
    extensions = c.get_server_metadata(headers=KEY).extensions
    assert "statistics" in extensions and "statistics" in httpx.get(f"{server.url}/v2", headers=KEY).json()[
        "extensions"]
