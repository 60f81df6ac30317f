"""The V2 protocol as Triton's and KServe's own tools read it (issue 35), against real servers: metadata,
configuration and returned shapes follow Triton's rule for every bundled model over tritonclient http and grpc;
perf_analyzer runs unchanged on both protocols; the repository, readiness and health answer as Triton does; the
protocol's limits hold on both transports; the KServe SDK's REST v2 and gRPC clients work unchanged."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import urllib.error
import urllib.request

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from tritonclient.utils import InferenceServerException

from tests.conftest import ROOT, Server, real_reviews, wait_until

STATEFUL = {"reuters-char-rnn", "waves-lstm-tutorial"}


@pytest.fixture(scope="module")
def bundled():
    srv = Server(ROOT / "models", "--api-keys", "k")
    try:
        srv.wait_ready(120)
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def two_workers(model_repo, tmp_path_factory):
    import shutil

    repo = tmp_path_factory.mktemp("two") / "models"
    shutil.copytree(model_repo, repo)
    srv = Server(repo, "--workers", "2")
    try:
        srv.wait_ready(120)  # each worker has loaded the repository: whichever answers knows every model
        yield srv
    finally:
        srv.stop()


def key() -> dict[str, str]:
    """The API key as headers; a fresh dict each call (tritonclient.http adds its own headers to the one given)."""
    return {"authorization": "Bearer k"}


def http_client(srv) -> triton_http.InferenceServerClient:
    return triton_http.InferenceServerClient(srv.url.removeprefix("http://"))


def grpc_client(srv) -> triton_grpc.InferenceServerClient:
    return triton_grpc.InferenceServerClient(srv.grpc)


def example(module, datatype: str, shape: list[int]):
    """An input of the metadata's shape with batch 2: texts, or random sequences."""
    dims = [2, *shape[1:]]
    tensor = module.InferInput("text" if datatype == "BYTES" else "sequences", dims, datatype)
    if datatype == "BYTES":
        texts, _ = real_reviews(1)
        tensor.set_data_from_numpy(np.array([t.encode() for t in texts], dtype=object).reshape(dims))
    else:
        tensor.set_data_from_numpy(np.random.default_rng(0).normal(size=dims).astype(np.float32))
    return tensor


def test_metadata_configuration_and_answers_follow_tritons_rule_for_every_bundled_model(bundled):
    """With max_batch_size > 0 the metadata's shape is [-1] + the configuration's dims, and outputs come back in
    it (the label was [-1] in the metadata, [1] in the configuration and [N] in answers)."""
    names = [m["name"] for m in httpx.post(f"{bundled.url}/v2/repository/index", headers=key()).json()]
    assert len(names) == 12
    for module, client in ((triton_http, http_client(bundled)), (triton_grpc, grpc_client(bundled))):
        for name in names:
            if module is triton_http:
                meta = client.get_model_metadata(name, headers=key())
                config = client.get_model_config(name, headers=key())
            else:  # as JSON with the proto's field names; 64-bit integers as strings
                meta = client.get_model_metadata(name, headers=key(), as_json=True)
                config = client.get_model_config(name, headers=key(), as_json=True)["config"]
            tensors = {t["name"]: t for t in meta["inputs"] + meta["outputs"]}
            dims = {t["name"]: [int(d) for d in t["dims"]] for t in config["input"] + config["output"]}
            batch, sequences = int(config["max_batch_size"]), "sequence_batching" in config
            assert batch > 0
            for tensor_name, tensor in tensors.items():
                assert [int(d) for d in tensor["shape"]] == [-1, *dims[tensor_name]], (name, tensor_name)
            assert sequences == (name in STATEFUL), name
            (datatype, shape), = [(t["datatype"], [int(d) for d in t["shape"]]) for t in meta["inputs"]]
            result = client.infer(name, [example(module, datatype, shape)], headers=key())
            for output in meta["outputs"]:
                got = result.as_numpy(output["name"])
                assert list(got.shape) == [2, *dims[output["name"]]], (name, output["name"], got.shape)


@pytest.mark.slow
def test_perf_analyzer_runs_unchanged_on_both_protocols(bundled, tmp_path):
    from bench.perf_analyzer import Unavailable, install, measure

    try:
        binary, env = install()
    except Unavailable as exc:
        pytest.skip(str(exc))
    open_server = Server(ROOT / "models")
    try:
        open_server.wait_ready(120)
        for model in ("imdb-lstm", "waves-lstm-tutorial"):
            for protocol, url in (("http", open_server.url.removeprefix("http://")), ("grpc", open_server.grpc)):
                figures = measure(binary, env, model, protocol, url, 2, interval_ms=1000)
                assert figures["throughput"] > 0 and figures["p99_ms"] > 0, (model, protocol, figures)
    finally:
        open_server.stop()


@pytest.mark.parametrize("path, call", [
    ("/v2/logging", lambda c: c.get_log_settings(headers=key())),
    ("/v2/trace/setting", lambda c: c.get_trace_settings(headers=key())),
    ("/v2/systemsharedmemory/status", lambda c: c.get_system_shared_memory_status(headers=key())),
    ("/v2/cudasharedmemory/status", lambda c: c.get_cuda_shared_memory_status(headers=key())),
])
def test_every_v2_path_answers_in_the_v2_error_shape(bundled, path, call):
    """Extensions this server does not serve: 404 with {"error": message}, which tritonclient reads (it raised
    TypeError printing the /v1 shape)."""
    r = httpx.get(f"{bundled.url}{path}", headers=key())
    assert r.status_code == 404 and isinstance(r.json()["error"], str)
    with pytest.raises(InferenceServerException) as err:
        call(http_client(bundled))
    assert "not found" in str(err.value).lower()


def test_model_ready_is_false_not_an_error_for_an_unknown_model(bundled):
    assert grpc_client(bundled).is_model_ready("nope", headers=key()) is False
    assert http_client(bundled).is_model_ready("nope", headers=key()) is False
    assert grpc_client(bundled).is_model_ready("imdb-lstm", headers=key()) is True


def test_repository_index_filters_ready_models(two_workers):
    client, grpc_c = http_client(two_workers), grpc_client(two_workers)
    client.unload_model("topics-gru")
    try:
        everything = {m["name"]: m["state"] for m in client.get_model_repository_index()}
        assert everything == {"sentiment-lstm": "READY", "topics-gru": "UNAVAILABLE"}
        ready = httpx.post(f"{two_workers.url}/v2/repository/index", json={"ready": True}).json()
        assert [m["name"] for m in ready] == ["sentiment-lstm"]
        grpc_ready = grpc_c.get_model_repository_index(as_json=True)["models"]
        assert {m["name"] for m in grpc_ready} == {"sentiment-lstm", "topics-gru"}
        channel = grpc.insecure_channel(two_workers.grpc)
        from rnnserve.service.grpc import messages

        index = channel.unary_unary("/inference.GRPCInferenceService/RepositoryIndex",
                                    request_serializer=lambda m: m.SerializeToString(),
                                    response_deserializer=messages.message("RepositoryIndexResponse").FromString)
        answer = index(messages.message("RepositoryIndexRequest")(ready=True), timeout=30)
        assert [m.name for m in answer.models] == ["sentiment-lstm"]
        channel.close()
    finally:
        client.load_model("topics-gru")


def test_a_load_with_a_configuration_applies_what_the_server_honours_on_every_worker(two_workers):
    client, grpc_c = http_client(two_workers), grpc_client(two_workers)
    client.load_model("sentiment-lstm", config=json.dumps({"max_batch_size": 8,
                                                           "dynamic_batching": {"max_queue_delay_microseconds": 500}}))
    try:
        for _ in range(20):  # any worker answers: every one applied it before the load answered
            config = client.get_model_config("sentiment-lstm")
            assert config["max_batch_size"] == 8, config
            assert config["dynamic_batching"]["max_queue_delay_microseconds"] == 500
        assert int(grpc_c.get_model_config("sentiment-lstm", as_json=True)["config"]["max_batch_size"]) == 8
        # The configuration as read, changed where it may be: a round trip is accepted.
        round_trip = client.get_model_config("sentiment-lstm") | {"max_batch_size": 4}
        client.load_model("sentiment-lstm", config=json.dumps(round_trip))
        assert client.get_model_config("sentiment-lstm")["max_batch_size"] == 4
        for refused, field in (({"max_batch_size": 8, "instance_group": [{"count": 2}]}, "instance_group"),
                               ({"input": [{"name": "x", "data_type": "TYPE_FP32", "dims": [3]}]}, "input"),
                               ({"max_batch_size": 0}, "max_batch_size")):
            with pytest.raises(InferenceServerException) as err:
                client.load_model("sentiment-lstm", config=json.dumps(refused))
            assert err.value.status() == "400" and field in err.value.message()
            with pytest.raises(InferenceServerException) as err:
                grpc_c.load_model("sentiment-lstm", config=json.dumps(refused))
            assert err.value.status() == "StatusCode.INVALID_ARGUMENT" and field in err.value.message()
        assert client.get_model_config("sentiment-lstm")["max_batch_size"] == 4  # refusals changed nothing
    finally:
        client.load_model("sentiment-lstm")  # without a configuration: the package's and the server's again
    assert client.get_model_config("sentiment-lstm")["max_batch_size"] == 64


def test_naming_an_output_twice_is_refused_on_both_protocols(two_workers):
    texts = ["a fine film"]
    for module, client in ((triton_http, http_client(two_workers)), (triton_grpc, grpc_client(two_workers))):
        inp = module.InferInput("text", [1, 1], "BYTES")
        inp.set_data_from_numpy(np.array([[t.encode()] for t in texts], dtype=object))
        twice = [module.InferRequestedOutput("label"), module.InferRequestedOutput("label")]
        with pytest.raises(InferenceServerException) as err:
            client.infer("sentiment-lstm", [inp], outputs=twice)
        assert "named twice" in err.value.message()


def test_a_bytes_input_is_shaped_n_or_n_1_only(two_workers):
    body = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1, 1, 1, 1, 1, 1], "data": ["a film"]}]}
    r = httpx.post(f"{two_workers.url}/v2/models/sentiment-lstm/infer", json=body)
    assert r.status_code == 422 and "[N, 1] or [N]" in r.json()["error"]
    inp = triton_grpc.InferInput("text", [1, 1, 1, 1, 1, 1], "BYTES")
    inp.set_data_from_numpy(np.array([b"a film"], dtype=object).reshape(1, 1, 1, 1, 1, 1))
    with pytest.raises(InferenceServerException) as err:
        grpc_client(two_workers).infer("sentiment-lstm", [inp])
    assert err.value.status() == "StatusCode.INVALID_ARGUMENT"


def test_request_ids_are_capped_alike_over_grpc(two_workers):
    long_id = "x" * 5000

    def trailing(rid: str) -> str:
        channel = grpc.insecure_channel(two_workers.grpc)
        from rnnserve.service.grpc import messages

        live = channel.unary_unary("/inference.GRPCInferenceService/ServerLive",
                                   request_serializer=lambda m: m.SerializeToString(),
                                   response_deserializer=messages.message("ServerLiveResponse").FromString)
        _, call = live.with_call(messages.message("ServerLiveRequest")(), metadata=(("x-request-id", rid),))
        channel.close()
        return dict(call.trailing_metadata())["x-request-id"]

    assert trailing("mine-1") == "mine-1"
    assert trailing(long_id) != long_id and len(trailing(long_id)) <= 128


def test_unauthenticated_grpc_calls_create_no_metric_series(bundled):
    client = grpc_client(bundled)
    for i in range(30):
        with pytest.raises(InferenceServerException):
            client.infer(f"random-{i}", [example(triton_grpc, "BYTES", [-1, 1])])
    metrics = httpx.get(f"{bundled.url}/metrics").text
    assert "random-" not in metrics
    assert re.search(r'rnnserve_requests_total\{endpoint="grpc:ModelInfer",model="",status="401"\} 30', metrics)


def test_grpc_connections_are_capped_and_idle_ones_closed(model_repo):
    """600 silent connections (the HTTP/2 preface, then nothing) were all kept and starved HTTP; now at most
    MAX_GRPC_CONNECTIONS are, and one idle past GRPC_IDLE_S is closed."""
    srv = Server(model_repo, "--max-grpc-connections", "8", "--grpc-idle-s", "1")
    sockets = []
    try:
        srv.wait_ready()
        for _ in range(40):
            s = socket.create_connection(("127.0.0.1", srv.grpc_port))
            s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes.fromhex("000000040000000000"))  # preface, SETTINGS
            sockets.append(s)
        assert httpx.get(f"{srv.url}/health/live").status_code == 200

        def closed(s: socket.socket) -> bool:
            s.settimeout(0.05)
            try:
                while data := s.recv(65536):  # GOAWAY frames, then the end
                    del data
                return True
            except TimeoutError:
                return False
            except OSError:
                return True

        wait_until(lambda: all(closed(s) for s in sockets), 20, "every silent connection to be closed")
        assert grpc_client(srv).is_server_live()  # room again
    finally:
        for s in sockets:
            s.close()
        srv.stop()


def test_a_second_server_cannot_take_the_grpc_port(model_repo, two_workers):
    """grpcio sets SO_REUSEPORT for the server's own workers; another server on the same port took a share of the
    first one's connections, answered from its own models. Now it is refused at start."""
    other = Server(model_repo, "--grpc-port", str(two_workers.grpc_port))
    assert other.proc.wait(timeout=60) == 2
    assert "is in use by another process" in other.stop()
    assert grpc_client(two_workers).is_server_live()


def test_an_early_error_reaches_pythons_standard_client_after_a_large_upload(two_workers):
    """urllib sends the whole body before it reads: the 404 for an unknown model must wait for the body."""
    texts, _ = real_reviews(3000)
    body = "".join(json.dumps({"text": t}) + "\n" for t in texts).encode()
    assert len(body) > 7_000_000
    request = urllib.request.Request(f"{two_workers.url}/v1/models/nope/score", data=body,
                                     headers={"content-type": "application/x-ndjson"})
    for _ in range(3):
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(request, timeout=60)
        assert err.value.code == 404 and "not found" in json.loads(err.value.read())["error"]["message"]


def test_the_kserve_sdk_clients_work_unchanged(two_workers):
    """KServe's InferenceRESTClient (protocol v2) and InferenceGRPCClient, in a process of their own: KServe's
    generated protobuf classes and tritonclient's register the same names in protobuf's default pool."""
    script = ROOT / "tests" / "clients" / "kserve_sdk.py"
    r = subprocess.run([sys.executable, str(script), two_workers.url, two_workers.grpc], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.strip().splitlines()[-1] == "ok"



def test_server_reflection_lists_the_services_only_when_asked(model_repo, two_workers):
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    def services(srv) -> list[str]:
        with grpc.insecure_channel(srv.grpc) as channel:
            stub = reflection_pb2_grpc.ServerReflectionStub(channel)
            answer = next(stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
                                                    timeout=30))
            return sorted(s.name for s in answer.list_services_response.service)

    with pytest.raises(grpc.RpcError) as err:  # off by default, as in Triton
        services(two_workers)
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
    srv = Server(model_repo, "--grpc-reflection")
    try:
        srv.wait_ready()
        assert "inference.GRPCInferenceService" in services(srv) and "grpc.health.v1.Health" in services(srv)
    finally:
        srv.stop()


def test_the_native_grpc_server_serves_the_same_clients(model_repo):
    """--grpc-server native (pygrpc-native: HTTP/2 in Rust) under the same handlers: tritonclient's unary calls
    and its stream (a bidirectional method, which pygrpc-native hands to grpcio behind it), the error statuses,
    the health service and the KServe SDK's clients answer as with grpcio."""
    import queue

    from grpc_health.v1 import health_pb2, health_pb2_grpc

    srv = Server(model_repo, "--grpc-server", "native")
    try:
        srv.wait_ready()
        client = grpc_client(srv)
        inp = example(triton_grpc, "BYTES", [-1, 1])
        result = client.infer("sentiment-lstm", [inp], request_id="native-1")
        assert result.get_response().id == "native-1" and result.as_numpy("label").shape == (2, 1)
        with pytest.raises(InferenceServerException) as err:
            client.infer("nope", [inp])
        assert err.value.status() == "StatusCode.NOT_FOUND"
        assert client.is_model_ready("nope") is False
        answers: queue.Queue = queue.Queue()
        client.start_stream(callback=lambda result, error: answers.put((result, error)))
        client.async_stream_infer("sentiment-lstm", [inp])
        client.async_stream_infer("nope", [inp])
        (first, ok), (_, failed) = answers.get(timeout=30), answers.get(timeout=30)
        client.stop_stream()
        assert ok is None and first.as_numpy("probabilities").shape == (2, 2) and "not found" in str(failed)
        with grpc.insecure_channel(srv.grpc) as channel:
            answer = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=30)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
        r = subprocess.run([sys.executable, str(ROOT / "tests" / "clients" / "kserve_sdk.py"), srv.url, srv.grpc],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stdout + r.stderr
    finally:
        srv.stop()
