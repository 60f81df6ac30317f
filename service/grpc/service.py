"""The RPCs of `inference.GRPCInferenceService`, one handler each, on the HTTP app's own registry, model control,
codecs, limits, API keys and metrics, so a model answers the same over both protocols.

Errors: the service's exceptions carry an HTTP status; each becomes the gRPC status that means the same, with
the same message (NOT_FOUND 404, INVALID_ARGUMENT 400/415/422, RESOURCE_EXHAUSTED 413/431, UNAVAILABLE 503,
UNAUTHENTICATED 401, PERMISSION_DENIED 403, DEADLINE_EXCEEDED 504). On ModelStreamInfer a request's failure is
its response's `error_message`, and the stream stays open.
"""

from __future__ import annotations

import hmac
import logging
import time
import uuid

import grpc
from google.protobuf import json_format

from rnnserve import __version__
from rnnserve.service.core.errors import ServiceError, Unauthorized
from rnnserve.service.grpc import messages
from rnnserve.service.grpc.tensors import fill_outputs, requested, v2_header
from rnnserve.service.http.codecs import (
    check_classification,
    codec_for,
    inference,
    model_config,
    output_names,
    top_classes,
)
from rnnserve.service.http.responses import model_stats, repository_index
from rnnserve.service.http.v2 import metadata_of

log = logging.getLogger("rnnserve.grpc")
CODES = {400: grpc.StatusCode.INVALID_ARGUMENT, 401: grpc.StatusCode.UNAUTHENTICATED,
         403: grpc.StatusCode.PERMISSION_DENIED, 404: grpc.StatusCode.NOT_FOUND,
         405: grpc.StatusCode.UNIMPLEMENTED, 409: grpc.StatusCode.ABORTED, 413: grpc.StatusCode.RESOURCE_EXHAUSTED,
         415: grpc.StatusCode.INVALID_ARGUMENT, 422: grpc.StatusCode.INVALID_ARGUMENT,
         431: grpc.StatusCode.RESOURCE_EXHAUSTED, 503: grpc.StatusCode.UNAVAILABLE,
         504: grpc.StatusCode.DEADLINE_EXCEEDED}
# The V2 extensions served over gRPC
EXTENSIONS = ["classification", "model_configuration", "model_repository", "sequence", "sequence(string_id)",
              "statistics"]


def status_of(exc: ServiceError) -> grpc.StatusCode:
    return CODES.get(exc.status, grpc.StatusCode.INTERNAL)


class InferenceService:
    """The handlers, bound to one worker's app state (settings, registry, control, metrics)."""

    def __init__(self, state):
        self.state = state
        self.keys = [k.encode() for k in state.settings.keys()]

    def handlers(self) -> grpc.GenericRpcHandler:
        """Every RPC of the service, each wrapped with the API key check, error statuses and metrics."""
        table = {}
        for name, (request_type, response_type, streaming) in messages.methods().items():
            handler = getattr(self, _snake(name))
            if streaming:
                table[name] = grpc.stream_stream_rpc_method_handler(
                    self._streaming(name, handler), request_type.FromString, response_type.SerializeToString)
            else:
                table[name] = grpc.unary_unary_rpc_method_handler(
                    self._unary(name, handler), request_type.FromString, response_type.SerializeToString)
        return grpc.method_handlers_generic_handler(messages.SERVICE, table)

    def _unary(self, rpc: str, handler):
        async def call(request, context: grpc.aio.ServicerContext):
            start, model, status = time.perf_counter(), getattr(request, "model_name", "") or getattr(
                request, "name", ""), 200
            context.set_trailing_metadata((("x-request-id", _request_id(context)),))
            try:
                self._authorize(context)
                return await handler(request)
            except ServiceError as exc:
                status = exc.status
                await context.abort(status_of(exc), str(exc))
            except Exception:
                status = 500
                log.exception("gRPC %s failed", rpc, extra={"request_id": _request_id(context)})
                await context.abort(grpc.StatusCode.INTERNAL, "internal error")
            finally:
                self.state.metrics.request_done(model if status != 404 else "", f"grpc:{rpc}", status,
                                                time.perf_counter() - start)
        return call

    def _streaming(self, rpc: str, handler):
        async def call(requests, context: grpc.aio.ServicerContext):
            try:
                self._authorize(context)
            except ServiceError as exc:
                await context.abort(status_of(exc), str(exc))
            async for request in requests:
                start, status = time.perf_counter(), 200
                try:
                    yield messages.ModelStreamInferResponse(infer_response=await handler(request))
                except ServiceError as exc:
                    status = exc.status
                    yield messages.ModelStreamInferResponse(error_message=str(exc))
                except Exception:
                    status = 500
                    log.exception("gRPC %s failed", rpc, extra={"request_id": _request_id(context)})
                    yield messages.ModelStreamInferResponse(error_message="internal error")
                finally:
                    self.state.metrics.request_done(request.model_name if status != 404 else "", f"grpc:{rpc}",
                                                    status, time.perf_counter() - start)
        return call

    def _authorize(self, context: grpc.aio.ServicerContext) -> None:
        """With API keys set, `authorization: Bearer KEY` or `x-api-key: KEY` metadata (Unauthorized else)."""
        if not self.keys:
            return
        given = b""
        for key, value in context.invocation_metadata() or ():
            value = value.encode() if isinstance(value, str) else value
            if key == "x-api-key":
                given = value.strip()
            elif key == "authorization" and value[:7].lower() == b"bearer ":
                given = value[7:].strip()
        # Every key compared in constant time, as the HTTP middleware does.
        if not given or not any([hmac.compare_digest(given, key) for key in self.keys]):
            raise Unauthorized("missing or invalid API key: send metadata 'authorization: Bearer KEY' or "
                               "'x-api-key: KEY'")

    async def server_live(self, request):
        return messages.message("ServerLiveResponse")(live=True)

    async def server_ready(self, request):
        return messages.message("ServerReadyResponse")(ready=self.state.registry.ready)

    async def model_ready(self, request):
        model = self.state.registry.get(request.name, request.version or None)
        codec_for(model)  # a model this protocol cannot run is no V2 model
        return messages.message("ModelReadyResponse")(ready=True)

    async def server_metadata(self, request):
        return messages.message("ServerMetadataResponse")(name="rnnserve", version=__version__,
                                                           extensions=EXTENSIONS)

    async def model_metadata(self, request):
        registry = self.state.registry
        meta = metadata_of(registry.get(request.name, request.version or None))
        if not request.version:
            meta["versions"] = [str(v) for v in sorted(registry.versions(request.name))]
        meta.pop("parameters")  # not in the gRPC message
        return messages.message("ModelMetadataResponse")(**meta)

    async def model_infer(self, request):
        state, version = self.state, request.model_version or None
        model = state.registry.get(request.model_name, version)
        codec = codec_for(model)
        header, binary, raw = v2_header(request)
        rows = codec.decode_v2(model, header, binary, state.settings)
        wanted = requested(request, output_names(model))  # checked before the model runs
        for _, k in wanted:
            if k is not None:
                check_classification(model, k)
        model, out = await state.registry.call(request.model_name, version, inference(state.sequences, header, rows))
        tensors = codec.encode_v2(model, out)
        response = messages.ModelInferResponse(model_name=model.name, model_version=str(model.version),
                                               id=request.id)
        for name, k in wanted:
            if k is not None:
                tensors[name] = top_classes(model, tensors[name], k)
        fill_outputs(response, tensors, [name for name, _ in wanted], raw)
        return response

    async def model_config(self, request):
        config = model_config(self.state.registry.get(request.name, request.version or None))
        return messages.message("ModelConfigResponse")(config=json_format.ParseDict(
            config, messages.message("ModelConfig")()))

    async def model_statistics(self, request):
        figures = await self.state.metrics.read_statistics()
        stats = model_stats(self.state.registry, figures, request.name or None, request.version or None)
        return json_format.ParseDict({"model_stats": stats}, messages.message("ModelStatisticsResponse")())

    async def model_stream_infer(self, request):
        return await self.model_infer(request)

    async def repository_index(self, request):
        rows = repository_index(self.state.registry)
        if request.ready:
            rows = [row for row in rows if row["state"] == "READY"]
        return messages.message("RepositoryIndexResponse")(models=rows)

    async def repository_model_load(self, request):
        await self.state.control.load(request.model_name)
        return messages.message("RepositoryModelLoadResponse")()

    async def repository_model_unload(self, request):
        await self.state.control.unload(request.model_name)
        return messages.message("RepositoryModelUnloadResponse")()


def _snake(name: str) -> str:
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in name).lstrip("_")


def _request_id(context) -> str:
    return dict(context.invocation_metadata() or ()).get("x-request-id") or uuid.uuid4().hex
