"""Each task's V2 tensors, one codec per runtime class: the inputs a model takes and the outputs it gives
(metadata and configuration, in Triton's shapes), a request's input tensors -> the runtime's rows, the
runtime's result -> output tensors. The data plane runs decode -> predict -> encode and never asks what task
a model is; adding a task is a runtime and a codec here (and its /v1 codec, http/codecs.py).

Shapes follow Triton's rule for models that batch (max_batch_size > 0): the metadata's shape is [-1] + the
configuration's dims, and outputs come back in it: text [-1, 1] in, probabilities [-1, C] and label [-1, 1]
out; sequences [-1, T, F] in, values [-1, 1] or [-1, T, 1] out (triton-inference-server/server
docs/user_guide/model_configuration.md, "Maximum Batch Size"). A text input may also come as [N]."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import numpy as np

from rnnserve.service.core.errors import InvalidInput, PayloadTooLarge, WrongTask, echo
from rnnserve.service.runtime.base import ModelRuntime
from rnnserve.service.runtime.generator import TextGenerator
from rnnserve.service.runtime.sequence import SequenceModel
from rnnserve.service.runtime.text import ClassificationResult, TextClassifier
from rnnserve.service.settings import Settings
from rnnserve.service.v2.types import Tensor

TEXT, SEQUENCES = "text", "sequences"
PROBABILITIES, LABEL, VALUES = "probabilities", "label", "values"
TRITON_TYPES = {"FP32": "TYPE_FP32", "BYTES": "TYPE_STRING"}


def tensor_spec(name: str, datatype: str, *dims: int) -> dict:
    """A tensor's metadata: its shape with the batch axis (-1) first."""
    return {"name": name, "datatype": datatype, "shape": [-1, *dims]}


def one_input(inputs: list[Tensor], name: str, datatype: str) -> Tensor:
    if len(inputs) != 1:
        raise InvalidInput(f"expected exactly one input tensor named {name!r}, got {len(inputs)}")
    tensor = inputs[0]
    if tensor.name != name:
        raise InvalidInput(f"unexpected input {echo(tensor.name)}; this model takes {name!r}")
    if tensor.datatype != datatype:
        raise InvalidInput(f"input {name!r} must have datatype {datatype}, not {echo(tensor.datatype)}")
    return tensor


class TaskCodec(ABC):
    """A runtime's V2 tensors. decode raises InvalidInput (422) or PayloadTooLarge (413)."""

    usage = ""  # how a client uses a model of this task over V2, for WrongTask's message

    @abstractmethod
    def inputs(self, model: ModelRuntime) -> list[dict]:
        """The metadata of the inputs the model takes."""

    @abstractmethod
    def decode(self, model: ModelRuntime, inputs: list[Tensor], settings: Settings, stepping: bool) -> Sequence:
        """The request's input tensors -> the runtime's rows. stepping: a sequence's step (the sequence
        extension), which may carry fewer steps than a whole input."""

    def classes(self, model: ModelRuntime) -> list[str]:
        """The names of the classes the model's probabilities are over (none: it gives values)."""
        return model.labels

    def outputs(self, model: ModelRuntime) -> list[dict]:
        """The metadata of the outputs: class probabilities and labels, or values."""
        if classes := self.classes(model):
            return [tensor_spec(PROBABILITIES, "FP32", len(classes)), tensor_spec(LABEL, "BYTES", 1)]
        return [tensor_spec(VALUES, "FP32", *(-1 if d is None else d for d in model.package.metadata.output.shape[1:]))]

    def encode(self, model: ModelRuntime, out) -> dict[str, Tensor]:
        """The runtime's result -> the output tensors by name, in the metadata's shapes."""
        values = self.values(out).astype(np.float32, copy=False)
        if classes := self.classes(model):
            labels = [classes[i] for i in values.argmax(axis=1)]
            return {PROBABILITIES: Tensor(PROBABILITIES, "FP32", list(values.shape), values),
                    LABEL: Tensor(LABEL, "BYTES", [len(labels), 1], labels)}
        return {VALUES: Tensor(VALUES, "FP32", list(values.shape), values)}

    def values(self, out) -> np.ndarray:
        """The result's numbers: probabilities [N, C], or values [N, 1] / [N, T, 1]."""
        return out


class TextCodec(TaskCodec):
    """Text classifiers: one BYTES tensor `text` [N, 1] (or [N])."""

    usage = "infer with one BYTES input 'text' shaped [N, 1]"

    def inputs(self, model: ModelRuntime) -> list[dict]:
        return [tensor_spec(TEXT, "BYTES", 1)]

    def decode(self, model: ModelRuntime, inputs: list[Tensor], settings: Settings, stepping: bool) -> list[str]:
        tensor = one_input(inputs, TEXT, "BYTES")
        shape = tensor.shape
        if not (len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)):
            raise InvalidInput(f"input 'text' must be shaped [N, 1] or [N], got {echo(shape)}")
        texts = tensor.data
        assert isinstance(texts, list)  # BYTES data (types.Tensor)
        if not texts:
            raise InvalidInput("no texts to classify")
        check_text_limits(texts, settings.max_texts_per_request, settings.max_text_chars)
        return texts

    def values(self, out: ClassificationResult) -> np.ndarray:
        return out.probabilities


class GeneratorCodec(TextCodec):
    """Character language models, read as classifiers of the next character: BYTES `text` -> each text's
    next-character probabilities over the model's characters (and the most probable one as the label); with
    the sequence extension a text in steps, the state carried between them."""

    def classes(self, model: TextGenerator) -> list[str]:  # type: ignore[override]
        return model.chars

    def values(self, out: np.ndarray) -> np.ndarray:  # type: ignore[override]
        return out


class SequenceCodec(TaskCodec):
    """Numeric-sequence models: one FP32 tensor `sequences` [N, T, F]; a sequence's step may carry 1..T steps,
    the state carrying the ones before. Classifiers answer like text classifiers; regression with values."""

    usage = "infer with one FP32 input 'sequences' shaped [N, T, F]"

    def inputs(self, model: SequenceModel) -> list[dict]:  # type: ignore[override]
        return [tensor_spec(SEQUENCES, "FP32", *model.shape)]

    def decode(self, model: SequenceModel, inputs: list[Tensor], settings: Settings,  # type: ignore[override]
               stepping: bool) -> np.ndarray:
        tensor = one_input(inputs, SEQUENCES, "FP32")
        steps, features = model.shape
        shape = tensor.shape
        fits = (len(shape) == 3 and shape[0] >= 1 and shape[2] == features
                and (1 <= shape[1] <= steps if stepping and model.stateful else shape[1] == steps))
        if not fits:
            expected = f"1..{steps}" if stepping and model.stateful else steps
            raise InvalidInput(f"input shape must be [N, {expected}, {features}] with N >= 1, got {echo(shape)}")
        if shape[0] > settings.max_texts_per_request:
            raise PayloadTooLarge(f"{shape[0]} sequences in one request; the limit is {settings.max_texts_per_request}")
        return model.as_input(tensor.data, steps=shape[1])


def check_text_limits(texts: list[str], max_texts: int, max_chars: int) -> None:
    """The request limits every text-taking operation checks before any work: PayloadTooLarge (413) past them."""
    if len(texts) > max_texts:
        raise PayloadTooLarge(f"{len(texts)} texts in one request; the limit is {max_texts}")
    for i, text in enumerate(texts):
        if len(text) > max_chars:
            raise PayloadTooLarge(f"text {i} has {len(text)} characters; the limit is {max_chars}")


CODECS: dict[type[ModelRuntime], TaskCodec] = {TextClassifier: TextCodec(), SequenceModel: SequenceCodec(),
                                               TextGenerator: GeneratorCodec()}


def codec_for(model: ModelRuntime) -> TaskCodec:
    """The model's codec; WrongTask (422) for a runtime the V2 protocol cannot run."""
    codec = CODECS.get(type(model))
    if codec is not None:
        return codec
    for runtime, codec in CODECS.items():  # a subclass of a runtime
        if isinstance(model, runtime):
            return codec
    raise WrongTask(model.name, model.task, tuple(task for runtime in CODECS for task in runtime.tasks))


def output_names(model: ModelRuntime) -> list[str]:
    return [spec["name"] for spec in codec_for(model).outputs(model)]


def top_classes(model: ModelRuntime, probabilities: np.ndarray, k: int) -> Tensor:
    """The classification extension: each row's k most probable classes as "score:index:label" (Triton's
    format, the score with six decimals), most probable first, as BYTES [N, min(k, C)] in place of the
    probabilities."""
    classes = codec_for(model).classes(model)
    order = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
    data = [f"{row[i]:f}:{i}:{classes[i]}" for row, top in zip(probabilities, order) for i in top]
    return Tensor(PROBABILITIES, "BYTES", [len(probabilities), order.shape[1]], data)


def model_config(model: ModelRuntime, sequence_idle_s: float, max_sequences: int) -> dict:
    """The model-configuration extension: Triton's ModelConfig as JSON (json_format's names), dims without the
    batch axis. Stateful models (the sequence extension) have `sequence_batching`, the others
    `dynamic_batching`: Triton's tools send sequence_id only to models configured for sequences."""
    codec = codec_for(model)

    def tensors(items: list[dict]) -> list[dict]:
        return [{"name": t["name"], "data_type": TRITON_TYPES[t["datatype"]], "dims": t["shape"][1:]} for t in items]

    delay_us = round(model.batcher.max_delay_s * 1e6)
    config = {"name": model.name, "platform": "onnxruntime_onnx", "backend": "onnxruntime",
              "max_batch_size": model.batcher.max_batch_size, "input": tensors(codec.inputs(model)),
              "output": tensors(codec.outputs(model))}
    if model.stateful:
        config["sequence_batching"] = {"max_sequence_idle_microseconds": round(sequence_idle_s * 1e6),
                                       "oldest": {"max_candidate_sequences": max_sequences,
                                                  "preferred_batch_size": [model.batcher.max_batch_size],
                                                  "max_queue_delay_microseconds": delay_us}}
    else:
        config["dynamic_batching"] = {"preferred_batch_size": [model.batcher.max_batch_size],
                                      "max_queue_delay_microseconds": delay_us}
    return config
