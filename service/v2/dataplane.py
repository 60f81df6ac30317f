"""The V2 data plane: every operation of the protocol, once, for every transport (http/v2.py, http/repository.py
and grpc/ translate to and from it). Built once per worker on its ServerState.

Infer is decode -> run -> encode: the input tensors become the runtime's rows (the task's codec), the rows run
through the registry's current copy of the model (predict, or one step of a sequence), the result becomes the
output tensors the request asked for.

`predict` is where every prediction runs, whatever asked for it: V2 infer over HTTP and gRPC, /v1 predict and
file scoring's blocks. What watches or steers traffic hooks in there, once for every protocol: `observers` see
each prediction after it is answered (a Prediction: the model, the rows, the result or the error, its time).
An inference request refused before it ran (an unknown model, an input that does not decode) reaches them
through `refused`, which the transports call with the error they answer.

`resolve` is where a request's version is chosen (service/rollout): a label names its version, a request that
names none goes to the version labelled stable (the newest without one), and a prediction that names none
may go to the canary instead, by its share (sticky for the rollout's header, read from `routing`: the HTTP
headers or gRPC metadata a transport sets). After the answer, a share of predictions also runs on the shadow.
"""

from __future__ import annotations

import hmac
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Protocol, cast

import numpy as np

from rnnserve import __version__
from rnnserve.service.core.errors import BadRequest, InvalidInput, ServiceError, Unauthorized, echo
from rnnserve.service.core.package import Serving
from rnnserve.service.logs import request_id
from rnnserve.service.rollout.plan import LABEL_RE, STABLE, Rollout, choose, routing
from rnnserve.service.rollout.shadow import Comparisons, Shadow
from rnnserve.service.runtime.base import ModelRuntime
from rnnserve.service.runtime.states import SequenceStep
from rnnserve.service.state import ServerState
from rnnserve.service.v2 import codecs
from rnnserve.service.v2.statistics import model_stats
from rnnserve.service.v2.types import InferRequest, InferResponse, Parameters, RequestedOutput

# The extensions both transports serve; HTTP adds binary_tensor_data and generate (http/v2.py).
EXTENSIONS = ["classification", "model_configuration", "model_repository", "sequence", "sequence(string_id)",
              "statistics"]
log = logging.getLogger("rnnserve.dataplane")
HONOURED = "max_batch_size and dynamic_batching.max_queue_delay_microseconds"
# The failure predict() showed the observers, so that the transport's `refused` does not show it again.
_reported: ContextVar[Exception | None] = ContextVar("rnnserve_reported", default=None)
UNAUTHORIZED = ("missing or invalid API key: send Authorization: Bearer KEY or X-API-Key: KEY (over gRPC as "
                "metadata 'authorization: Bearer KEY' or 'x-api-key: KEY')")


@dataclass(slots=True)
class Prediction:
    """One prediction as the data plane ran it: the model version that answered (None: the request failed
    before one did), the rows it was given (texts or sequences [T, F]), the runtime's result or the error,
    where it came from (`endpoint`: "v2", "v1", "score"), its request id and its seconds from call to answer."""

    name: str
    model: ModelRuntime | None
    rows: Sequence | np.ndarray
    result: Any
    error: Exception | None
    endpoint: str
    request_id: str
    seconds: float


class PredictionObserver(Protocol):
    def prediction(self, event: Prediction) -> None:
        """Called on the event loop after the answer is known: record, sample or queue, never block or raise."""


class DataPlane:
    def __init__(self, state: ServerState, observers: Sequence[PredictionObserver] = ()):
        self.state, self.registry, self.settings = state, state.registry, state.settings
        self.keys = [k.encode() for k in state.settings.keys()]
        self.observers = list(observers)
        self.rollouts = state.control.rollouts
        self.comparisons = Comparisons(state.metrics)
        self.shadow = Shadow(state.registry, self.comparisons, state.settings.shadow_max_pending,
                             state.settings.shadow_max_queue)

    # -- access and accounting -------------------------------------------------------------------------------

    def authorize(self, given: bytes | None) -> None:
        """With API keys set, the key a request carries must be one of them (Unauthorized, 401 /
        UNAUTHENTICATED). Every key is compared in constant time; a key is never logged."""
        if self.keys and not (given and any([hmac.compare_digest(given, key) for key in self.keys])):
            raise Unauthorized(UNAUTHORIZED)

    def observe(self, model: str, endpoint: str, status: int, seconds: float) -> None:
        """Count one request in /metrics. The model label is bounded: only a name the registry knows, and never
        one from a request that failed the key check (any client could otherwise grow the series)."""
        known = status not in (401, 403) and bool(model) and self.registry.knows(model)
        self.state.metrics.request_done(model if known else "", endpoint, status, seconds)

    @property
    def max_rows(self) -> int:
        """Rows one request may carry (texts, sequences), checked before a tensor's elements are decoded."""
        return self.settings.max_texts_per_request

    # -- health and metadata -----------------------------------------------------------------------------------

    def ready(self) -> bool:
        return self.registry.ready

    def server_metadata(self, extensions: Sequence[str] = ()) -> dict:
        return {"name": "rnnserve", "version": __version__, "extensions": sorted([*EXTENSIONS, *extensions])}

    def resolve(self, name: str, version: str | int | None, split: bool = False) -> str | int | None:
        """The version a request names, as a number: a label's version (NotFound for a label the model does
        not have); without one, the stable version, or with `split` (a prediction) the canary for its share.
        A labelled version that is not loaded receives nothing: the stable one (or None: the newest) answers
        for a canary, and a missing stable leaves the newest. A version number passes as it is."""
        if isinstance(version, str) and LABEL_RE.fullmatch(version):
            return (self.rollouts.get(name) or Rollout()).version_of(name, version)
        rollout = self.rollouts.get(name) if version is None else None
        if rollout is None:
            return version
        loaded = self.registry.models.get(name, {})
        for label in (choose(rollout, routing.get()) if split else None, STABLE):
            if label is not None and rollout.labels.get(label) in loaded:
                return rollout.labels[label]
        return None

    def model(self, name: str, version: str | int | None) -> ModelRuntime:
        """The model version a request names (NotFound 404, NotReady 503), one the V2 protocol runs."""
        model: ModelRuntime = self.registry.get(name, self.resolve(name, version))
        codecs.codec_for(model)
        return model

    def model_ready(self, name: str, version: str | None) -> bool:
        """Whether the version is loaded and ready: false (not an error) for one that is not, as Triton answers."""
        try:
            self.model(name, version)
        except ServiceError:
            return False
        return True

    def model_metadata(self, name: str, version: str | None) -> dict:
        """The version's metadata; without a version, the newest's with every loaded version listed."""
        model = self.model(name, version)
        codec = codecs.codec_for(model)
        versions = [str(model.version)] if version else [str(v) for v in sorted(self.registry.versions(name))]
        return {"name": model.name, "versions": versions, "platform": "onnxruntime_onnx",
                "inputs": codec.inputs(model), "outputs": codec.outputs(model),
                "parameters": {"task": model.task, "labels": model.labels, "maxlen": model.package.maxlen}}

    def model_config(self, name: str, version: str | None) -> dict:
        s = self.settings
        return codecs.model_config(self.model(name, version), s.sequence_idle_s, s.per_worker(s.max_sequences))

    async def statistics(self, name: str | None, version: str | None) -> list[dict]:
        resolved = self.resolve(name, version) if name and version else version
        return model_stats(self.registry, await self.state.metrics.read_statistics(), name,
                           None if resolved is None else str(resolved))

    # -- the model repository ----------------------------------------------------------------------------------

    def repository_index(self, ready: bool = False) -> list[dict]:
        """Every version on disk or loaded with its state (READY or UNAVAILABLE, with the reason); ready: the
        READY ones only."""
        registry = self.registry
        rows = {(name, version): {"name": name, "version": version, "state": "UNAVAILABLE", "reason": "not loaded"}
                for name, version in registry.on_disk()}
        for name in registry.names():
            for failed, reason in registry.failed(name).items():
                rows[(name, failed)] = {"name": name, "version": failed, "state": "UNAVAILABLE", "reason": reason}
            for loaded in registry.versions(name):
                rows[(name, str(loaded))] = {"name": name, "version": str(loaded), "state": "READY", "reason": ""}
        return [rows[k] for k in sorted(rows) if not ready or rows[k]["state"] == "READY"]

    async def load(self, name: str, config: object = None) -> None:
        """Load or reload every version of `name` on every worker. config (Triton's ModelConfig as JSON, a
        string or an object): the fields this server honours are applied to every version until the next load;
        any other field must equal the model's configuration (BadRequest naming it). Without config, the
        package's and the server's batch settings apply again."""
        serving = None if config is None else self._override(name, config)
        await self.state.control.load(name, serving)

    async def unload(self, name: str) -> None:
        await self.state.control.unload(name)

    def _override(self, name: str, config: object) -> Serving:
        if isinstance(config, str | bytes):
            try:
                config = json.loads(config)
            except ValueError:
                raise BadRequest("parameter 'config' is not valid JSON") from None
        if not isinstance(config, dict):
            raise BadRequest(f"parameter 'config' must be a JSON object (Triton's ModelConfig), not {echo(config)}")
        loaded = self.registry.versions(name)
        current = self.model_config(name, None) if loaded else {"name": name}
        serving: dict = {}
        for key, value in cast(dict, _snake(config)).items():
            if key == "max_batch_size":
                serving["max_batch_size"] = _integer(value, "max_batch_size", 1)
            elif key == "dynamic_batching" and isinstance(value, dict):
                for sub, setting in value.items():
                    if sub == "max_queue_delay_microseconds":
                        serving["max_batch_delay_ms"] = _integer(setting, f"{key}.{sub}", 0) / 1000
                    elif sub != "preferred_batch_size":  # derived from max_batch_size here
                        raise BadRequest(f"config field {key}.{sub} is not honoured by this server (it honours "
                                         f"{HONOURED})")
            elif key not in current or _plain(value) != _plain(current[key]):
                raise BadRequest(f"config field {key} cannot be changed by a load: this server honours {HONOURED}; "
                                 "every other field must be the model's own (GET its configuration)")
        return Serving(**serving)

    # -- inference -----------------------------------------------------------------------------------------------

    async def infer(self, request: InferRequest) -> InferResponse:
        """Run a request: NotFound/NotReady for the model, InvalidInput/PayloadTooLarge (422/413) for its
        inputs, outputs or parameters, checked before the model runs (a sequence's step must not run twice)."""
        name = request.model_name
        sequence = sequence_of(request.parameters)
        version = self.resolve(name, request.model_version, split=sequence is None)  # once: the codec's version
        model = self.model(name, version)
        codec = codecs.codec_for(model)
        wanted = self._outputs(model, request.outputs)
        rows = codec.decode(model, request.inputs, self.settings, stepping=sequence is not None)
        model, out = await self.predict(name, version, rows, "v2", sequence)
        tensors = codec.encode(model, out)
        outputs = []
        for requested, k in wanted:
            tensor = tensors[requested]
            if k is not None:
                assert isinstance(tensor.data, np.ndarray)  # probabilities: checked in _outputs
                tensor = codecs.top_classes(model, tensor.data, k)
            outputs.append(tensor)
        return InferResponse(model.name, str(model.version), outputs, request.id)

    async def predict(self, name: str, version: str | int | None, rows: Sequence | np.ndarray, endpoint: str,
                      sequence: SequenceStep | None = None) -> tuple[ModelRuntime, Any]:
        """Rows through the current copy of a model version (predict, or a sequence's step): (the model that
        answered, its result). The version as `resolve` chooses it (a sequence's steps: never the canary's
        split, so every step runs on one version); the runtime's errors pass through; the observers see every
        outcome, and the rollout's shadow a share of the predictions answered."""
        run: Callable[[ModelRuntime], Awaitable]
        if sequence is None:
            run = lambda m: m.predict(rows)  # noqa: E731 - the registry runs it on the current copy
        else:
            run = lambda m: self.state.sequences.step(m, sequence, rows)  # noqa: E731
        if version is None or type(version) is str:
            version = self.resolve(name, version, split=sequence is None)
        rollout = self.rollouts.get(name) if sequence is None else None
        shadowing = rollout is not None and rollout.shadow_share > 0
        if not self.observers and not shadowing:
            return await self.registry.call(name, version, run)
        started = time.perf_counter()
        model: ModelRuntime | None = None
        try:
            model, out = await self.registry.call(name, version, run)
        except Exception as exc:
            if self.observers:
                _reported.set(exc)
                self._observe(Prediction(name, model, rows, None, exc, endpoint, request_id.get(),
                                         time.perf_counter() - started))
            raise
        seconds = time.perf_counter() - started
        if self.observers:
            self._observe(Prediction(name, model, rows, out, None, endpoint, request_id.get(), seconds))
        if shadowing:
            assert rollout is not None
            self.shadow.offer(name, rollout, model, rows, out, seconds)
        return model, out

    def refused(self, name: str, endpoint: str, error: Exception) -> None:
        """An inference request (endpoint "v1" or "v2") answered with `error`: the observers see it as a failed
        prediction with no rows, unless predict() already showed them this error."""
        if self.observers and _reported.get() is not error:
            self._observe(Prediction(name, None, (), None, error, endpoint, request_id.get(), 0.0))

    def _observe(self, event: Prediction) -> None:
        for observer in self.observers:
            try:
                observer.prediction(event)
            except Exception:  # noqa: BLE001 - an observer's fault never fails an answer
                log.exception("prediction observer failed", extra={"observer": type(observer).__name__})

    def _outputs(self, model: ModelRuntime, requested: list[RequestedOutput]) -> list[tuple[str, int | None]]:
        """(name, classification k or None) of each output to answer with, in the order asked (all, when the
        request names none). InvalidInput for an unknown or repeated name or a classification that cannot be."""
        names = codecs.output_names(model)
        if not requested:
            return [(name, None) for name in names]
        wanted: list[tuple[str, int | None]] = []
        for out in requested:
            if out.name not in names:
                raise InvalidInput(f"unknown output {echo(out.name)}; outputs are {' and '.join(map(repr, names))}")
            if any(out.name == seen for seen, _ in wanted):
                raise InvalidInput(f"output {echo(out.name)} is named twice; name each output once")
            k = out.parameters.get("classification")
            if k is not None:
                if not codecs.codec_for(model).classes(model):
                    raise InvalidInput(f"model {echo(model.name)} gives values, not classes: no classification")
                if type(k) is not int or k < 1:
                    raise InvalidInput(f"parameter 'classification' must be an integer >= 1, not {echo(k)}")
                if out.name != codecs.PROBABILITIES:
                    raise InvalidInput(f"classification applies to {codecs.PROBABILITIES!r}, not {echo(out.name)}")
            wanted.append((out.name, k))
        return wanted


def sequence_of(parameters: Parameters) -> SequenceStep | None:
    """The sequence extension's request parameters: `sequence_id` a non-zero integer or non-empty string (0,
    "" or none: no sequence), `sequence_start` and `sequence_end` booleans (default false). InvalidInput for
    values of other types."""
    sequence_id = parameters.get("sequence_id", 0)
    flags = {key: parameters.get(f"sequence_{key}", False) for key in ("start", "end")}
    if type(sequence_id) not in (int, str):  # JSON integers past 64 bits arrive as floats
        raise InvalidInput(f"parameter 'sequence_id' must be an integer of at most 64 bits or a string, not "
                           f"{echo(sequence_id)}")
    for key, flag in flags.items():
        if type(flag) is not bool:
            raise InvalidInput(f"parameter 'sequence_{key}' must be true or false, not {echo(flag)}")
    if sequence_id in (0, ""):
        if any(flags.values()):
            raise InvalidInput("sequence_start and sequence_end need a sequence_id (a non-zero integer or a "
                               "non-empty string)")
        return None
    assert isinstance(sequence_id, int | str)
    return SequenceStep(sequence_id, start=bool(flags["start"]), end=bool(flags["end"]))


def _snake(value: object) -> object:
    """protobuf's JSON names (lowerCamelCase) as the field names (snake_case), at every level."""
    if isinstance(value, dict):
        return {re.sub(r"(?<!^)(?=[A-Z])", "_", k).lower(): _snake(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_snake(v) for v in value]
    return value


def _plain(value: object) -> object:
    """A configuration value compared as JSON means it: protobuf's JSON writes 64-bit integers as strings."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in cast(dict, _snake(value)).items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, str) and re.fullmatch(r"-?\d+", value):
        return int(value)
    return value


def _integer(value: object, field: str, least: int) -> int:
    plain = _plain(value)
    if type(plain) is not int or plain < least:
        raise BadRequest(f"config field {field} must be an integer >= {least}, not {echo(value)}")
    return plain
