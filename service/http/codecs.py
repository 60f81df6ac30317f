"""Each task's wire format, one codec per runtime class. A codec decodes a /v1 body or a V2 request into the
runtime's rows and encodes the runtime's result back, so the handlers (v1.py, v2.py, and any protocol to
come) run decode -> registry.call(predict) -> encode and never ask what task a model is. Adding a task:
its runtime, and a codec here."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Sequence

import numpy as np

from rnnserve.service.core.errors import InvalidInput, PayloadTooLarge, WrongTask, echo
from rnnserve.service.http.body import check_limits
from rnnserve.service.http.responses import class_predictions, to_predictions, value_predictions
from rnnserve.service.http.schemas import PredictRequest
from rnnserve.service.http.tensors import SEQUENCES_NAME, TEXT_NAME, read_sequences, read_texts
from rnnserve.service.runtime.base import ModelRuntime
from rnnserve.service.runtime.generator import TextGenerator
from rnnserve.service.runtime.sequence import SequenceModel
from rnnserve.service.runtime.states import SequenceStates, SequenceStep
from rnnserve.service.runtime.text import ClassificationResult, TextClassifier
from rnnserve.service.settings import Settings

PROBS_NAME, LABEL_NAME, VALUES_NAME = "probabilities", "label", "values"
Tensors = dict[str, np.ndarray | list[str]]  # V2 output name -> FP32 array or BYTES strings


class Codec(ABC):
    """A runtime's /v1 and V2 wire formats. decode_* raise InvalidInput (422) or PayloadTooLarge (413)."""

    @abstractmethod
    def decode_v1(self, model: ModelRuntime, body: PredictRequest, settings: Settings) -> Sequence | np.ndarray:
        """A /v1 predict body -> the runtime's rows."""

    @abstractmethod
    def encode_v1(self, model: ModelRuntime, out, body: PredictRequest) -> list[dict]:
        """The runtime's result -> /v1 predictions, one per row."""

    @abstractmethod
    def v2_inputs(self, model: ModelRuntime) -> list[dict]:
        """The V2 metadata of the inputs the model takes."""

    @abstractmethod
    def decode_v2(self, model: ModelRuntime, header: dict, binary: bytes,
                  settings: Settings) -> Sequence | np.ndarray:
        """A V2 request (its JSON header and binary tensor data) -> the runtime's rows."""

    def classes(self, model: ModelRuntime) -> list[str]:
        """The names of the classes the model's probabilities are over (none: it gives values)."""
        return model.labels

    def v2_outputs(self, model: ModelRuntime) -> list[dict]:
        """The V2 metadata of the outputs: class probabilities and labels, or values."""
        if classes := self.classes(model):
            return [{"name": PROBS_NAME, "datatype": "FP32", "shape": [-1, len(classes)]},
                    {"name": LABEL_NAME, "datatype": "BYTES", "shape": [-1]}]
        return [{"name": VALUES_NAME, "datatype": "FP32", "shape": [-1, *model.package.metadata.output.shape[1:]]}]

    def encode_v2(self, model: ModelRuntime, out) -> Tensors:
        """The runtime's result -> V2 output tensors by name."""
        values = self.values(out).astype(np.float32, copy=False)
        if classes := self.classes(model):
            return {PROBS_NAME: values, LABEL_NAME: [classes[i] for i in values.argmax(axis=1)]}
        return {VALUES_NAME: values}

    def values(self, out) -> np.ndarray:
        """The result's numbers: probabilities [N, C], or values [N, 1] / [N, T, 1]."""
        return out


class TextCodec(Codec):
    """Text classifiers: /v1 `texts` or `text`; V2 one BYTES tensor `text` [N] (or [N, 1])."""

    def decode_v1(self, model: TextClassifier, body: PredictRequest, settings: Settings) -> list[str]:
        if body.sequences is not None:
            raise InvalidInput(f"model {echo(model.name)} classifies text: send 'texts' or 'text', not 'sequences'")
        check_limits(body.all_texts, settings.max_texts_per_request, settings.max_text_chars)
        return body.all_texts

    def encode_v1(self, model: TextClassifier, out: ClassificationResult, body: PredictRequest) -> list[dict]:
        return to_predictions(model.labels, out, body.top_k, body.return_probabilities)

    def v2_inputs(self, model: TextClassifier) -> list[dict]:
        return [{"name": TEXT_NAME, "datatype": "BYTES", "shape": [-1]}]

    def decode_v2(self, model: TextClassifier, header: dict, binary: bytes, settings: Settings) -> list[str]:
        texts = read_texts(header, binary, settings.max_texts_per_request)
        check_limits(texts, settings.max_texts_per_request, settings.max_text_chars)
        return texts

    def values(self, out: ClassificationResult) -> np.ndarray:
        return out.probabilities


class GeneratorCodec(TextCodec):
    """Character language models, read as classifiers of the next character: /v1 `texts` or `text` and V2
    BYTES `text` [N] -> each text's next-character probabilities over the model's characters (and the most
    probable one as the label). /v1 generate samples continuations; this reads texts as they are, and with the
    sequence extension a text in steps, the state carried between them."""

    def classes(self, model: TextGenerator) -> list[str]:
        return model.chars

    def encode_v1(self, model: TextGenerator, out: np.ndarray, body: PredictRequest) -> list[dict]:
        return class_predictions(model.chars, out, body.top_k, body.return_probabilities)

    def values(self, out: np.ndarray) -> np.ndarray:
        return out


class SequenceCodec(Codec):
    """Numeric-sequence models: /v1 `sequences` [N][T][F] (or [N][T]); V2 one FP32 tensor `sequences`
    [N, T, F]. Classifiers answer like text classifiers; regression with values."""

    def decode_v1(self, model: SequenceModel, body: PredictRequest, settings: Settings) -> np.ndarray:
        if body.sequences is None:
            steps, features = model.shape
            raise InvalidInput(f"model {echo(model.name)} takes numeric sequences: send 'sequences' shaped "
                               f"[N][{steps}][{features}], not texts")
        if len(body.sequences) > settings.max_texts_per_request:
            raise PayloadTooLarge(f"{len(body.sequences)} sequences in one request; the limit is "
                                  f"{settings.max_texts_per_request}")
        return model.as_input(body.sequences)

    def encode_v1(self, model: SequenceModel, out: np.ndarray, body: PredictRequest) -> list[dict]:
        if model.labels:
            return class_predictions(model.labels, out, body.top_k, body.return_probabilities)
        return value_predictions(out)

    def v2_inputs(self, model: SequenceModel) -> list[dict]:
        return [{"name": SEQUENCES_NAME, "datatype": "FP32", "shape": [-1, *model.shape]}]

    def decode_v2(self, model: SequenceModel, header: dict, binary: bytes, settings: Settings) -> np.ndarray:
        # A sequence's step may carry 1..T steps, the state carrying the ones before.
        stepping = model.stateful and _in_sequence(header)
        x = read_sequences(header, binary, model.shape, settings.max_texts_per_request, up_to_steps=stepping)
        return model.as_input(x, steps=x.shape[1] if stepping else None)


CODECS: dict[type[ModelRuntime], Codec] = {TextClassifier: TextCodec(), SequenceModel: SequenceCodec(),
                                           TextGenerator: GeneratorCodec()}
TRITON_TYPES = {"FP32": "TYPE_FP32", "BYTES": "TYPE_STRING"}


def inference(states: SequenceStates, header: dict, rows: Sequence) -> Callable[[ModelRuntime], Awaitable]:
    """What a V2 infer request runs on a model (for registry.call): predict, or with the sequence extension's
    parameters one step of its sequence. InvalidInput for parameters that are not the extension's types."""
    parameters = header.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise InvalidInput(f"'parameters' must be an object, not {echo(parameters)}")
    sequence = sequence_of(parameters)
    if sequence is None:
        return lambda model: model.predict(rows)
    return lambda model: states.step(model, sequence, rows)


def _in_sequence(header: dict) -> bool:
    """Whether the request is a sequence's step (its parameters checked first: InvalidInput as sequence_of)."""
    parameters = header.get("parameters")
    return isinstance(parameters, dict) and sequence_of(parameters) is not None


def sequence_of(parameters: dict) -> SequenceStep | None:
    """The sequence extension's request parameters: `sequence_id` a non-zero integer or non-empty string (0,
    "" or none: no sequence), `sequence_start` and `sequence_end` booleans (default false)."""
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
    return SequenceStep(sequence_id, **flags)


def output_names(model: ModelRuntime) -> list[str]:
    """The names of the V2 outputs the model gives."""
    return [tensor["name"] for tensor in codec_for(model).v2_outputs(model)]


def check_classification(model: ModelRuntime, k: object) -> list[str]:
    """The model's classes for the classification extension; InvalidInput unless k is an integer >= 1 and the
    model classifies. Handlers check it before running the model (a sequence's step must not run twice)."""
    classes = codec_for(model).classes(model)
    if not classes:
        raise InvalidInput(f"model {echo(model.name)} gives values, not classes: no classification")
    if type(k) is not int or k < 1:
        raise InvalidInput(f"parameter 'classification' must be an integer >= 1, not {echo(k)}")
    return classes


def top_classes(model: ModelRuntime, probabilities: np.ndarray, k: object) -> list[list[str]]:
    """The classification extension: each row's k most probable classes as "score:index:label" (Triton's
    format, the score with six decimals), most probable first; k beyond the class count gives them all.
    InvalidInput as check_classification."""
    classes = check_classification(model, k)
    assert isinstance(k, int)  # checked just now
    order = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
    return [[f"{row[i]:f}:{i}:{classes[i]}" for i in top] for row, top in zip(probabilities, order)]


def model_config(model: ModelRuntime) -> dict:
    """The model-configuration extension: Triton's ModelConfig as JSON (json_format's names), dims without the
    batch axis, the dynamic batching settings."""
    codec = codec_for(model)

    def tensors(items: list[dict]) -> list[dict]:
        return [{"name": t["name"], "data_type": TRITON_TYPES[t["datatype"]], "dims": t["shape"][1:] or [1]}
                for t in items]

    return {"name": model.name, "platform": "onnxruntime_onnx", "backend": "onnxruntime",
            "max_batch_size": model.batcher.max_batch_size, "input": tensors(codec.v2_inputs(model)),
            "output": tensors(codec.v2_outputs(model)),
            "dynamic_batching": {"preferred_batch_size": [model.batcher.max_batch_size],
                                 "max_queue_delay_microseconds": round(model.batcher.max_delay_s * 1e6)}}
PREDICT_TASKS = tuple(task for runtime in CODECS for task in runtime.tasks)


def codec_for(model: ModelRuntime) -> Codec:
    """The model's codec; WrongTask (422, naming the operation to use) for a runtime that predicts nothing."""
    codec = CODECS.get(type(model))
    if codec is None:
        raise WrongTask(model, PREDICT_TASKS)
    return codec
