"""inference.GRPCInferenceService: one handler per RPC, named after it, each a translation to the V2 data plane
(service/v2/dataplane.py) and back, so a model answers the same over both protocols.

Every call is checked for its API key first (`authorization: Bearer KEY` or `x-api-key: KEY` metadata),
carries a request id back in its trailing metadata (`x-request-id`: the client's, if it is at most 128
printable characters) and is counted in /metrics by the data plane. Errors: the service's exceptions carry an
HTTP status; each becomes the gRPC status that means the same, with the same message (NOT_FOUND 404,
INVALID_ARGUMENT 400/415/422, ABORTED 409, RESOURCE_EXHAUSTED 413/431, UNAVAILABLE 503, UNAUTHENTICATED 401,
PERMISSION_DENIED 403, DEADLINE_EXCEEDED 504). On ModelStreamInfer a request's failure is its response's
`error_message`, and the stream stays open.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import grpc
from google.protobuf import json_format

from rnnserve.service.core.errors import ServiceError
from rnnserve.service.grpc import messages
from rnnserve.service.grpc.tensors import infer_request, infer_response, parameters
from rnnserve.service.logs import accept_request_id, request_id
from rnnserve.service.observe.tracing import PROPAGATED, Tracing
from rnnserve.service.rollout.plan import routing
from rnnserve.service.v2.dataplane import DataPlane

log = logging.getLogger("rnnserve.grpc")
CODES = {400: grpc.StatusCode.INVALID_ARGUMENT, 401: grpc.StatusCode.UNAUTHENTICATED,
         403: grpc.StatusCode.PERMISSION_DENIED, 404: grpc.StatusCode.NOT_FOUND,
         405: grpc.StatusCode.UNIMPLEMENTED, 409: grpc.StatusCode.ABORTED, 413: grpc.StatusCode.RESOURCE_EXHAUSTED,
         415: grpc.StatusCode.INVALID_ARGUMENT, 422: grpc.StatusCode.INVALID_ARGUMENT,
         431: grpc.StatusCode.RESOURCE_EXHAUSTED, 503: grpc.StatusCode.UNAVAILABLE,
         504: grpc.StatusCode.DEADLINE_EXCEEDED}
M = messages.message
SERVICE = "inference.GRPCInferenceService"
UNTRACED = {"ServerLive", "ServerReady", "ModelReady"}  # probes: no spans
INFER = {"ModelInfer", "ModelStreamInfer"}  # refusals shown to the data plane's observers (payload logging)


def status_of(exc: ServiceError) -> grpc.StatusCode:
    return CODES.get(exc.status, grpc.StatusCode.INTERNAL)


class InferenceServicer:
    """The RPCs, on one worker's data plane."""

    def __init__(self, dataplane: DataPlane, tracing: Tracing | None = None):
        self.dataplane = dataplane
        self.tracing = tracing

    def handlers(self) -> dict[str, grpc.RpcMethodHandler]:
        """Every RPC of the service by name, each wrapped with the key check, error statuses and metrics."""
        table = {}
        for name, (request_type, response_type, streaming) in messages.methods().items():
            handler = getattr(self, name)  # each RPC's handler bears its name
            wrap = grpc.stream_stream_rpc_method_handler if streaming else grpc.unary_unary_rpc_method_handler
            table[name] = wrap((self._streaming if streaming else self._unary)(name, handler),
                               request_type.FromString, response_type.SerializeToString)
        return table

    def _begin(self, context: grpc.aio.ServicerContext) -> None:
        metadata = dict(context.invocation_metadata() or ())
        routing.set(metadata)  # a canary's sticky key
        rid = accept_request_id(_text(metadata.get("x-request-id")))
        request_id.set(rid)
        context.set_trailing_metadata((("x-request-id", rid),))
        given = _bytes(metadata.get("x-api-key"))
        bearer = _bytes(metadata.get("authorization"))
        if given is None and bearer is not None and bearer[:7].lower() == b"bearer ":
            given = bearer[7:]
        self.dataplane.authorize(None if given is None else given.strip())

    def _span(self, rpc: str, context: grpc.aio.ServicerContext) -> tuple:
        """A server span for the call (None: untraced), child of the trace context in its metadata."""
        if self.tracing is None or rpc in UNTRACED:
            return None, None
        carrier = {k: _text(v) or "" for k, v in context.invocation_metadata() or () if k in PROPAGATED}
        return self.tracing.start(f"{SERVICE}/{rpc}", carrier, {"rpc.system": "grpc", "rpc.service": SERVICE,
                                                                  "rpc.method": rpc})

    def _end(self, span, token, name: str, code: grpc.StatusCode) -> None:
        assert self.tracing is not None  # a span was started
        attributes = {"rpc.grpc.status_code": code.value[0], "rnnserve.model.name": name}
        error = code.name if code in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNAVAILABLE,
                                      grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNKNOWN) else None
        self.tracing.end(span, token, attributes, error)

    def _refused(self, rpc: str, name: str, exc: Exception) -> None:
        if rpc in INFER:
            self.dataplane.refused(name, "v2", exc)

    def _unary(self, rpc: str, handler: Callable[..., Awaitable]):
        async def call(request, context: grpc.aio.ServicerContext):
            started, status, code = time.perf_counter(), 200, grpc.StatusCode.OK
            span, token = self._span(rpc, context)
            name = getattr(request, "model_name", "") or getattr(request, "name", "")
            try:
                self._begin(context)
                return await handler(request)
            except ServiceError as exc:
                status, code = exc.status, status_of(exc)
                self._refused(rpc, name, exc)
                await context.abort(code, exc.message)
            except Exception as exc:
                status, code = 500, grpc.StatusCode.INTERNAL
                log.exception("gRPC %s failed", rpc)
                self._refused(rpc, name, exc)
                await context.abort(code, "internal error")
            finally:
                self.dataplane.observe(name, f"grpc:{rpc}", status, time.perf_counter() - started)
                if span is not None:
                    self._end(span, token, name, code)
        return call

    def _streaming(self, rpc: str, handler: Callable[..., Awaitable]):
        async def call(requests: AsyncIterator, context: grpc.aio.ServicerContext):
            try:
                self._begin(context)
            except ServiceError as exc:
                self.dataplane.observe("", f"grpc:{rpc}", exc.status, 0.0)
                await context.abort(status_of(exc), exc.message)
            async for request in requests:
                started, status, code = time.perf_counter(), 200, grpc.StatusCode.OK
                span, token = self._span(rpc, context)  # one per request of the stream
                try:
                    yield M("ModelStreamInferResponse")(infer_response=await handler(request))
                except ServiceError as exc:
                    status, code = exc.status, status_of(exc)
                    self._refused(rpc, request.model_name, exc)
                    yield M("ModelStreamInferResponse")(error_message=exc.message)
                except Exception as exc:
                    status, code = 500, grpc.StatusCode.INTERNAL
                    log.exception("gRPC %s failed", rpc)
                    self._refused(rpc, request.model_name, exc)
                    yield M("ModelStreamInferResponse")(error_message="internal error")
                finally:
                    self.dataplane.observe(request.model_name, f"grpc:{rpc}", status, time.perf_counter() - started)
                    if span is not None:
                        self._end(span, token, request.model_name, code)
        return call

    async def ServerLive(self, request):  # noqa: N802 - the protocol's names
        return M("ServerLiveResponse")(live=True)

    async def ServerReady(self, request):  # noqa: N802
        return M("ServerReadyResponse")(ready=self.dataplane.ready())

    async def ModelReady(self, request):  # noqa: N802
        return M("ModelReadyResponse")(ready=self.dataplane.model_ready(request.name, request.version or None))

    async def ServerMetadata(self, request):  # noqa: N802
        return M("ServerMetadataResponse")(**self.dataplane.server_metadata())

    async def ModelMetadata(self, request):  # noqa: N802
        meta = self.dataplane.model_metadata(request.name, request.version or None)
        meta.pop("parameters")  # not in the gRPC message
        return M("ModelMetadataResponse")(**meta)

    async def ModelInfer(self, request):  # noqa: N802
        infer, raw = infer_request(request, self.dataplane.max_rows)
        return infer_response(await self.dataplane.infer(infer), raw)

    async def ModelStreamInfer(self, request):  # noqa: N802 - one request of the stream
        return await self.ModelInfer(request)

    async def ModelConfig(self, request):  # noqa: N802
        config = self.dataplane.model_config(request.name, request.version or None)
        return M("ModelConfigResponse")(config=json_format.ParseDict(config, M("ModelConfig")()))

    async def ModelStatistics(self, request):  # noqa: N802
        stats = await self.dataplane.statistics(request.name or None, request.version or None)
        return json_format.ParseDict({"model_stats": stats}, M("ModelStatisticsResponse")())

    async def RepositoryIndex(self, request):  # noqa: N802
        return M("RepositoryIndexResponse")(models=self.dataplane.repository_index(request.ready))

    async def RepositoryModelLoad(self, request):  # noqa: N802
        await self.dataplane.load(request.model_name, parameters(request.parameters).get("config"))
        return M("RepositoryModelLoadResponse")()

    async def RepositoryModelUnload(self, request):  # noqa: N802
        await self.dataplane.unload(request.model_name)
        return M("RepositoryModelUnloadResponse")()


def _bytes(value: str | bytes | None) -> bytes | None:
    return value.encode() if isinstance(value, str) else value


def _text(value: str | bytes | None) -> str | None:
    return value.decode("latin-1") if isinstance(value, bytes) else value
