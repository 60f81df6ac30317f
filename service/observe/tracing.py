"""OpenTelemetry tracing (RNNSERVE_TRACING, the [otel] extra): one server span per request over HTTP and gRPC,
its parent the W3C `traceparent` / `tracestate` the client sent (HTTP headers, gRPC metadata), and under it,
once it is answered, a span per stage of each batch that served it.

Configured by the standard variables: OTEL_SDK_DISABLED, OTEL_SERVICE_NAME (default "rnnserve"),
OTEL_TRACES_EXPORTER (otlp, console or none), OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT / _HEADERS / _TIMEOUT
(OTLP over HTTP with protobuf: the only protocol shipped), OTEL_TRACES_SAMPLER / _ARG (unset here:
parentbased_traceidratio at 0.01, so a client's sampled trace is always followed and 1% of the rest are
traced), OTEL_BSP_* (the batch span processor). A configuration that cannot work (an unknown sampler or
exporter, a ratio that is not one, a gRPC protocol, an endpoint that is not a URL, the extra not installed)
disables tracing with a warning; the server starts as without it.

Spans (attributes as the HTTP and RPC semantic conventions name them, ours under rnnserve.*):
- the server span, `POST /v2/models/{name}/infer` (http.request.method, url.path, http.route,
  http.response.status_code) or `inference.GRPCInferenceService/ModelInfer` (rpc.system "grpc", rpc.service,
  rpc.method, rpc.grpc.status_code), with rnnserve.model.name, rnnserve.model.version and rnnserve.texts;
- per batch that served it: `queue` (from queueing to the batch's start), `compute_input` (tokenizing and
  padding), `compute_infer` (onnxruntime's run), `compute_output`, each with rnnserve.batch.size;
- `batch`: each batch run once, under the first traced request it served, with a span link to every traced
  request in it.
Health, readiness, /metrics, the page and the docs get no spans. Off, the service never imports OpenTelemetry
and a request pays one `is None` test; on, an unsampled request pays for its span's sampling decision only.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable
from contextvars import Token
from typing import Any
from urllib.parse import urlparse

from rnnserve import __version__
from rnnserve.service.runtime.batcher import TRACED, BatchRun, Traced
from rnnserve.service.settings import Settings

log = logging.getLogger("rnnserve.tracing")
DEFAULT_SAMPLER, DEFAULT_RATIO = "parentbased_traceidratio", "0.01"
RATIO_SAMPLERS = ("traceidratio", "parentbased_traceidratio")
SAMPLERS = ("always_on", "always_off", "parentbased_always_on", "parentbased_always_off", *RATIO_SAMPLERS)
PROPAGATED = ("traceparent", "tracestate")


class TracingConfigError(ValueError):
    pass


def traceparent() -> str | None:
    """The W3C traceparent of the current request's span, when it is traced (payload events carry it)."""
    traced = TRACED.get()
    if traced is None:
        return None
    context: Any = traced.context
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"


class Tracing:
    """A worker's tracer provider and the spans of its requests. Build it with `configure`."""

    def __init__(self, provider: Any):
        from opentelemetry import trace
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self._trace = trace
        self.provider = provider
        self.tracer = provider.get_tracer("rnnserve", __version__)
        self._propagator = TraceContextTextMapPropagator()

    @classmethod
    def configure(cls, settings: Settings) -> Tracing | None:
        """The tracing the settings and OTEL_* variables ask for, or None (off, disabled or not workable)."""
        if not settings.tracing:
            return None
        if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
            log.info("tracing is off: OTEL_SDK_DISABLED is true")
            return None
        try:
            provider = _provider()
        except ImportError as exc:
            log.warning("tracing is off: RNNSERVE_TRACING needs the [otel] extra (%s)", exc)
            return None
        except Exception as exc:  # noqa: BLE001 - any configuration the SDK refuses: serve without traces
            log.warning("tracing is off: %s", exc)
            return None
        return None if provider is None else cls(provider)

    def close(self) -> None:
        """Export what is pending and stop (blocks: call it in a thread)."""
        self.provider.shutdown()

    # -- server spans --------------------------------------------------------------------------------------------

    def start(self, name: str, carrier: dict[str, str], attributes: dict[str, Any]) -> tuple[Any, Token | None]:
        """A server span, child of the carrier's traceparent (when valid): (the span, the token of the Traced
        record set for the batcher when the span is sampled)."""
        parent = self._propagator.extract(carrier) if carrier else None
        span = self.tracer.start_span(name, context=parent, kind=self._trace.SpanKind.SERVER, attributes=attributes)
        token = TRACED.set(Traced(span.get_span_context())) if span.is_recording() else None
        return span, token

    def end(self, span: Any, token: Token | None, attributes: dict[str, Any], error: str | None = None) -> None:
        """End a server span with its outcome's attributes (error: the error's type, marking the span failed),
        after the spans of the batches that served it."""
        if token is not None:
            traced = TRACED.get()
            TRACED.reset(token)
            if traced is not None and traced.runs:
                self._stages(span, traced)
        span.set_attributes(attributes)
        if error is not None:
            span.set_attribute("error.type", error)
            span.set_status(self._trace.Status(self._trace.StatusCode.ERROR))
        span.end()

    def _stages(self, span: Any, traced: Traced) -> None:
        """The request's batches as spans under it, made now from the times the batcher kept (monotonic
        seconds, placed on the wall clock)."""
        offset = time.time_ns() - time.monotonic_ns()

        def ns(seconds: float) -> int:
            return int(seconds * 1e9) + offset

        parent = self._trace.set_span_in_context(span)
        texts = 0
        for rows, enqueued, run in traced.runs:
            texts += rows
            batch = {"rnnserve.batch.size": run.size}
            self._span("queue", parent, ns(enqueued), ns(run.started), {"rnnserve.texts": rows})
            times: Any = run.times
            if times is None:
                self._span("run", parent, ns(run.started), ns(run.ended), batch)
            else:
                at = run.started
                for stage, seconds in (("compute_input", times.compute_input), ("compute_infer", times.compute_infer),
                                       ("compute_output", times.compute_output)):
                    self._span(stage, parent, ns(at), ns(at + seconds), batch)
                    at += seconds
            if not run.spanned:
                run.spanned = True
                self._span("batch", parent, ns(run.started), ns(run.ended), batch, _links(self._trace, run))
        name, _, version = traced.runs[0][2].name.partition("/")
        span.set_attributes({"rnnserve.model.name": name, "rnnserve.model.version": version.split("/")[0],
                             "rnnserve.texts": texts})

    def _span(self, name: str, parent: Any, start: int, end: int, attributes: dict[str, Any],
              links: Iterable = ()) -> None:
        self.tracer.start_span(name, context=parent, start_time=start, attributes=attributes,
                               links=links).end(end_time=max(start, end))


def _links(trace: Any, run: BatchRun) -> list:
    return [trace.Link(traced.context) for traced in run.traced]


def _provider() -> Any:
    """A TracerProvider from the OTEL_* variables, None when they ask for no exporter; TracingConfigError for
    one that cannot work."""
    exporters = [e.strip() for e in os.environ.get("OTEL_TRACES_EXPORTER", "otlp").lower().split(",") if e.strip()]
    unknown = set(exporters) - {"otlp", "console", "none"}
    if unknown:
        raise TracingConfigError(f"OTEL_TRACES_EXPORTER {', '.join(sorted(unknown))} is not otlp, console or none")
    exporters = [e for e in exporters if e != "none"]
    if not exporters:
        log.info("tracing is off: OTEL_TRACES_EXPORTER is none")
        return None
    sampler = _sampler()
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

    resource = Resource.create({} if os.environ.get("OTEL_SERVICE_NAME") else {"service.name": "rnnserve"})
    provider = TracerProvider(sampler=sampler, resource=resource)
    for name in exporters:
        provider.add_span_processor(BatchSpanProcessor(_otlp() if name == "otlp" else ConsoleSpanExporter()))
    return provider


def _sampler() -> Any:
    from opentelemetry.sdk.trace import sampling

    name = os.environ.get("OTEL_TRACES_SAMPLER", DEFAULT_SAMPLER).strip().lower()
    if name not in SAMPLERS:
        raise TracingConfigError(f"OTEL_TRACES_SAMPLER {name!r} is not one of {', '.join(SAMPLERS)}")
    if name not in RATIO_SAMPLERS:
        return sampling._KNOWN_SAMPLERS[name]  # the SDK's own table of the standard names
    default = DEFAULT_RATIO if "OTEL_TRACES_SAMPLER" not in os.environ else ""
    arg = os.environ.get("OTEL_TRACES_SAMPLER_ARG", default)
    try:
        ratio = float(arg)
    except ValueError:
        ratio = -1.0
    if not 0 <= ratio <= 1:
        raise TracingConfigError(f"OTEL_TRACES_SAMPLER_ARG {arg!r} is not a ratio from 0 to 1")
    return (sampling.TraceIdRatioBased if name == "traceidratio" else sampling.ParentBasedTraceIdRatio)(ratio)


def _otlp() -> Any:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    protocol = (os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
                or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "http/protobuf").strip()
    if protocol != "http/protobuf":
        raise TracingConfigError(f"OTEL_EXPORTER_OTLP_PROTOCOL {protocol!r}: only http/protobuf is shipped")
    for variable in ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"):
        url = os.environ.get(variable)
        if url and (urlparse(url).scheme not in ("http", "https") or not urlparse(url).netloc):
            raise TracingConfigError(f"{variable} {url!r} is not an http(s) URL")
    return OTLPSpanExporter()
