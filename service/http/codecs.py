"""Each task's /v1 wire format, one codec per runtime class: a /v1 predict body -> the runtime's rows, the
runtime's result -> /v1 predictions, the model's description (/v1/models and the page) and how a /v1 client
uses a model of the task. The V2 protocol's tensors are service/v2/codecs.py's; adding a task is its runtime
and a codec in each."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import numpy as np

from rnnserve.service.core.errors import InvalidInput, PayloadTooLarge, WrongTask, echo
from rnnserve.service.http.responses import class_predictions, to_predictions, value_predictions
from rnnserve.service.http.schemas import PredictRequest
from rnnserve.service.runtime.base import ModelRuntime
from rnnserve.service.runtime.generator import TextGenerator
from rnnserve.service.runtime.sequence import SequenceModel
from rnnserve.service.runtime.text import ClassificationResult, TextClassifier
from rnnserve.service.settings import Settings
from rnnserve.service.v2.codecs import check_text_limits


class V1Codec(ABC):
    """decode raises InvalidInput (422) or PayloadTooLarge (413)."""

    usage = ""  # how to use a model of this task over /v1 ({name} filled in)

    @abstractmethod
    def decode(self, model: ModelRuntime, body: PredictRequest, settings: Settings) -> Sequence | np.ndarray:
        """A /v1 predict body -> the runtime's rows."""

    @abstractmethod
    def encode(self, model: ModelRuntime, out, body: PredictRequest) -> list[dict]:
        """The runtime's result -> /v1 predictions, one per row."""

    def describe(self, model: ModelRuntime) -> dict:
        """What a loaded model version is: its task, labels, provenance and figures, how it runs."""
        meta = model.package.metadata
        return {"name": model.name, "version": model.version, "task": model.task, "labels": model.labels,
                "architecture": meta.architecture, "maxlen": model.package.maxlen, "dataset": meta.dataset,
                "metrics": meta.metrics, "source": meta.source or {"kind": "trained"},
                "distillation": meta.distillation or None, "quantization": meta.quantization or None,
                "digest": model.package.digest, "provider": model.session.provider,
                "threads": model.session.threads, "max_batch_size": model.batcher.max_batch_size,
                "plots": model.package.plots}


class TextCodec(V1Codec):
    """Text classifiers: `texts` or `text` -> label, score, top-k and what the tokenizer did, per text."""

    usage = "use POST /v1/models/{name}/predict with texts"

    def decode(self, model: ModelRuntime, body: PredictRequest, settings: Settings) -> list[str]:
        if body.sequences is not None:
            raise InvalidInput(f"model {echo(model.name)} classifies text: send 'texts' or 'text', not 'sequences'")
        check_text_limits(body.all_texts, settings.max_texts_per_request, settings.max_text_chars)
        return body.all_texts

    def encode(self, model: ModelRuntime, out: ClassificationResult, body: PredictRequest) -> list[dict]:
        return to_predictions(model.labels, out, body.top_k, body.return_probabilities)

    def describe(self, model: TextClassifier) -> dict:  # type: ignore[override]
        spec = model.tokenizer.spec
        return super().describe(model) | {"padding": spec.padding, "truncating": spec.truncating,
                                          "vocab_size": spec.vocab_size, "tokenizer": model.tokenizer.implementation}


class GeneratorCodec(TextCodec):
    """Character language models read as classifiers of the next character: `texts` or `text` -> the most
    probable next character and the top-k over the model's characters. /v1 generate samples continuations."""

    usage = "use POST /v1/models/{name}/generate with a prompt"

    def encode(self, model: TextGenerator, out: np.ndarray, body: PredictRequest) -> list[dict]:  # type: ignore[override]
        return class_predictions(model.chars, out, body.top_k, body.return_probabilities)

    def describe(self, model: TextGenerator) -> dict:  # type: ignore[override]
        return V1Codec.describe(self, model) | {"characters": len(model.chars),
                                                "vocab_size": model.tokenizer.spec.vocab_size,
                                                "tokenizer": model.tokenizer.implementation}


class SequenceCodec(V1Codec):
    """Numeric-sequence models: `sequences` [N][T][F] (or [N][T]); classifiers answer like text classifiers,
    regression with `value` (or `values` per step)."""

    usage = "use POST /v1/models/{name}/predict with sequences"

    def decode(self, model: SequenceModel, body: PredictRequest, settings: Settings) -> np.ndarray:  # type: ignore[override]
        if body.sequences is None:
            steps, features = model.shape
            raise InvalidInput(f"model {echo(model.name)} takes numeric sequences: send 'sequences' shaped "
                               f"[N][{steps}][{features}], not texts")
        if len(body.sequences) > settings.max_texts_per_request:
            raise PayloadTooLarge(f"{len(body.sequences)} sequences in one request; the limit is "
                                  f"{settings.max_texts_per_request}")
        return model.as_input(body.sequences)

    def encode(self, model: ModelRuntime, out: np.ndarray, body: PredictRequest) -> list[dict]:
        if model.labels:
            return class_predictions(model.labels, out, body.top_k, body.return_probabilities)
        return value_predictions(out)

    def describe(self, model: SequenceModel) -> dict:  # type: ignore[override]
        steps, features = model.shape
        return super().describe(model) | {
            "input": {"steps": steps, "features": features,
                      "normalization": model.package.metadata.input.normalization},
            "per_step": model.per_step}


CODECS: dict[type[ModelRuntime], V1Codec] = {TextClassifier: TextCodec(), SequenceModel: SequenceCodec(),
                                             TextGenerator: GeneratorCodec()}


def codec_for(model: ModelRuntime) -> V1Codec:
    """The model's /v1 codec; WrongTask (422) for a runtime /v1 predict cannot run."""
    for runtime, codec in CODECS.items():
        if isinstance(model, runtime):
            return codec
    raise WrongTask(model.name, model.task, tuple(t for runtime in CODECS for t in runtime.tasks))


def usage(model: ModelRuntime) -> str:
    """How a /v1 client uses this model (WrongTask's hint)."""
    return codec_for(model).usage.format(name=model.name)
