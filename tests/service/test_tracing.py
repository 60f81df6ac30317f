"""OpenTelemetry tracing (service/observe/tracing.py): a real OTLP/HTTP receiver, started here, decodes what the
SDK's exporter sends (opentelemetry-proto's ExportTraceServiceRequest). A request over HTTP or gRPC carrying a
client's traceparent gives a server span in the client's trace with the batch's stages as its children; probes
give none; a configuration that cannot work leaves the server serving, untraced."""

from __future__ import annotations

import logging
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import tritonclient.grpc as triton
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from rnnserve.service.observe.tracing import Tracing
from rnnserve.service.settings import Settings
from tests.conftest import free_port, in_process, wait_ready, wait_until

TEXTS = ["a moving film", "dull and far too long"]
STAGES = {"queue", "compute_input", "compute_infer", "compute_output", "batch"}
SERVER = 2  # Span.SpanKind.SPAN_KIND_SERVER


class Receiver(BaseHTTPRequestHandler):
    spans: list = []

    def do_POST(self):  # noqa: N802 - http.server's name
        assert self.path == "/v1/traces"
        request = ExportTraceServiceRequest.FromString(self.rfile.read(int(self.headers["content-length"])))
        for resource in request.resource_spans:
            for scope in resource.scope_spans:
                self.spans.extend(scope.spans)
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.end_headers()

    def log_message(self, *args):
        pass


def attributes(span) -> dict:
    return {a.key: getattr(a.value, a.value.WhichOneof("value")) for a in span.attributes}


def in_trace(trace_id: str) -> list:
    return [s for s in Receiver.spans if s.trace_id.hex() == trace_id]


@pytest.fixture(scope="module")
def traced(model_repo):
    receiver = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{receiver.server_port}", "OTEL_BSP_SCHEDULE_DELAY": "20"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    port = free_port()
    try:
        with in_process(model_repo, grpc_port=port, tracing=True) as client:
            wait_ready(client)
            yield client, triton.InferenceServerClient(f"127.0.0.1:{port}")
    finally:
        for key, value in saved.items():
            os.environ.pop(key) if value is None else os.environ.__setitem__(key, value)
        receiver.shutdown()


def check_request_trace(trace_id: str, parent: str, name: str) -> dict:
    """The server span (named `name`, child of the client's span `parent`) and its stages' spans as children."""
    wait_until(lambda: {s.name for s in in_trace(trace_id)} >= {name} | STAGES, what=f"the spans of {name}")
    spans = in_trace(trace_id)
    server = next(s for s in spans if s.name == name)
    assert server.kind == SERVER and server.parent_span_id.hex() == parent
    for stage in spans:
        if stage is not server:
            assert stage.parent_span_id == server.span_id and stage.name in STAGES
            assert server.start_time_unix_nano <= stage.start_time_unix_nano <= stage.end_time_unix_nano \
                <= server.end_time_unix_nano
    batch = next(s for s in spans if s.name == "batch")
    assert server.span_id in {link.span_id for link in batch.links}
    assert attributes(batch)["rnnserve.batch.size"] >= len(TEXTS)
    found = attributes(server)
    assert found["rnnserve.model.name"] == "sentiment-lstm" and found["rnnserve.model.version"] == "1"
    assert found["rnnserve.texts"] == len(TEXTS)
    return found


def test_http_request_joins_the_clients_trace_with_its_stages(traced):
    client, _ = traced
    health_trace = "1" * 32
    client.get("/health/ready", headers={"traceparent": f"00-{health_trace}-{'2' * 16}-01"})
    client.get("/metrics", headers={"traceparent": f"00-{health_trace}-{'2' * 16}-01"})
    trace_id, parent = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    r = client.post("/v1/models/sentiment-lstm/predict", json={"texts": TEXTS},
                    headers={"traceparent": f"00-{trace_id}-{parent}-01", "tracestate": "vendor=1"})
    assert r.status_code == 200
    found = check_request_trace(trace_id, parent, "POST /v1/models/{name}/predict")
    assert found["http.request.method"] == "POST" and found["url.path"] == "/v1/models/sentiment-lstm/predict"
    assert found["http.response.status_code"] == 200 and found["http.route"] == "/v1/models/{name}/predict"
    assert in_trace(health_trace) == []  # ended before the request's spans: exported first, if at all


def test_grpc_request_joins_the_clients_trace_with_its_stages(traced):
    _, grpc_client = traced
    trace_id, parent = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"
    tensor = triton.InferInput("text", [len(TEXTS)], "BYTES")
    tensor.set_data_from_numpy(np.array([t.encode() for t in TEXTS], dtype=object))
    grpc_client.infer("sentiment-lstm", [tensor], headers={"traceparent": f"00-{trace_id}-{parent}-01"})
    found = check_request_trace(trace_id, parent, "inference.GRPCInferenceService/ModelInfer")
    assert found["rpc.system"] == "grpc" and found["rpc.service"] == "inference.GRPCInferenceService"
    assert found["rpc.method"] == "ModelInfer" and found["rpc.grpc.status_code"] == 0


def test_each_request_of_a_grpc_stream_has_its_own_span(traced):
    _, grpc_client = traced
    trace_id = "7" * 32
    answers = []
    grpc_client.start_stream(lambda result, error: answers.append(error or result),
                             headers={"traceparent": f"00-{trace_id}-{'8' * 16}-01"})
    try:
        tensor = triton.InferInput("text", [len(TEXTS)], "BYTES")
        tensor.set_data_from_numpy(np.array([t.encode() for t in TEXTS], dtype=object))
        for _ in range(2):
            grpc_client.async_stream_infer("sentiment-lstm", [tensor])
        wait_until(lambda: len(answers) == 2, what="the stream's answers")
    finally:
        grpc_client.stop_stream()
    name = "inference.GRPCInferenceService/ModelStreamInfer"
    wait_until(lambda: sum(s.name == name for s in in_trace(trace_id)) == 2, what="a span per request")
    assert all(not isinstance(a, Exception) for a in answers)


def test_an_unsampled_parent_gives_no_spans(traced):
    client, _ = traced
    unsampled, sampled = "5" * 32, "6" * 32
    client.post("/v1/models/sentiment-lstm/predict", json={"texts": TEXTS},
                headers={"traceparent": f"00-{unsampled}-{'7' * 16}-00"})
    client.post("/v1/models/sentiment-lstm/predict", json={"texts": TEXTS},
                headers={"traceparent": f"00-{sampled}-{'7' * 16}-01"})
    wait_until(lambda: in_trace(sampled), what="the sampled request's spans")
    assert in_trace(unsampled) == []


@pytest.mark.parametrize("variable, value", [("OTEL_TRACES_SAMPLER", "sometimes"),
                                             ("OTEL_TRACES_SAMPLER_ARG", "lots"),
                                             ("OTEL_TRACES_EXPORTER", "zipkin"),
                                             ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
                                             ("OTEL_EXPORTER_OTLP_ENDPOINT", "localhost:4318")])
def test_a_configuration_that_cannot_work_disables_tracing_with_a_warning(monkeypatch, caplog, variable, value):
    monkeypatch.setenv(variable, value)
    if variable == "OTEL_TRACES_SAMPLER_ARG":
        monkeypatch.setenv("OTEL_TRACES_SAMPLER", "traceidratio")
    with caplog.at_level(logging.WARNING, "rnnserve.tracing"):
        assert Tracing.configure(Settings(tracing=True)) is None
    assert variable in caplog.text


def test_off_and_disabled(monkeypatch):
    assert Tracing.configure(Settings()) is None
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    assert Tracing.configure(Settings(tracing=True)) is None
