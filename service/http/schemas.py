"""Request and response models of the /v1 API (they also document it in OpenAPI)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    model_validator,
)
from pydantic.json_schema import SkipJsonSchema


def _integral(value: object) -> object:
    # JSON Schema's "integer" includes 2.0 (and schema-driven clients send it); True and "2" stay refused.
    return int(value) if isinstance(value, float) and value.is_integer() else value


Integer = Annotated[StrictInt, BeforeValidator(_integral)]
"""A JSON integer: an int, or a number with no fractional part (JSON Schema's rule); not a bool or a string."""

FAIL_FAST = Field(fail_fast=True)  # list validation stops at the first wrong item


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={
        "oneOf": [{"required": ["texts"]}, {"required": ["text"]}, {"required": ["sequences"]}],
        "examples": [{"texts": ["a wonderful, moving film", "dull and far too long"], "top_k": 2},
                     {"sequences": [[[0.1], [0.5], [0.8], [0.9], [0.7], [0.3], [-0.1], [-0.5], [-0.8], [-0.9]]]}]})

    texts: Annotated[list[StrictStr], Field(min_length=1, fail_fast=True)] | SkipJsonSchema[None] = Field(
        None, description="Texts to classify (or use `text`), for text classifiers.")
    text: StrictStr | SkipJsonSchema[None] = Field(None, description="One text to classify (or use `texts`).")
    # Each step a number or a list of numbers: a union per element, not per whole list, so one bad value is
    # one error, not one for every value the other branch refuses; FailFast: validation stops at the first
    # (a megabyte of wrong values cost seconds of errors).
    sequences: Annotated[list[Annotated[list[StrictFloat | Annotated[list[StrictFloat], FAIL_FAST]], FAIL_FAST]],
                         FAIL_FAST] | SkipJsonSchema[None] = Field(
        None, description="For numeric-sequence models: N sequences of T steps of F numbers, [N][T][F] "
        "([N][T] when F is 1), as the model's `input` says.")
    top_k: Integer = Field(1, ge=1, le=1000, description="How many of the most probable labels to return per text.")
    return_probabilities: StrictBool = Field(False, description="Also return every label's probability.")

    @model_validator(mode="after")
    def exactly_one_input(self) -> PredictRequest:
        if sum(x is not None for x in (self.texts, self.text, self.sequences)) != 1:
            raise ValueError("give exactly one of 'text', 'texts' or 'sequences'")
        return self

    @property
    def all_texts(self) -> list[str]:
        if self.texts is not None:
            return self.texts
        assert self.text is not None  # the validator requires one of them
        return [self.text]


class ExplainRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={
        "examples": [{"text": "A wonderful, moving film, though far too long."}]})

    text: StrictStr = Field(description="The text to explain.")
    label: StrictStr | SkipJsonSchema[None] = Field(None, description="The label to explain (default: the "
                                                    "predicted one).")
    method: Literal["occlusion", "window"] = Field("occlusion", description="occlusion: leave out each word in "
                                                   "turn (one run per word the model sees); window: leave out "
                                                   "runs of `window` words (fewer runs, for long texts), each "
                                                   "word getting an equal share of its run's change.")
    window: Integer = Field(5, ge=2, le=100, description="Words per run for method=window.")


MAX_SEED = 2**64 - 1  # numpy's generators take any integer; JSON answers (orjson) carry up to 64 bits
# The bounds before the validator: after it, pydantic writes them into the JSON schema as "ge"/"le", which
# JSON Schema does not know (schemathesis then sent -849 as a valid seed).
# The documented maximum is the largest float below 2^64: clients (and schemathesis's generator) that hold JSON
# numbers as floats round the seeds near 2^64 to 2^64 itself, which would then read as within a maximum of
# 2^64 - 1; the server still takes up to 2^64 - 1.
Seed = Annotated[StrictInt, Field(ge=0, le=MAX_SEED, json_schema_extra={"maximum": 2**64 - 2048}),
                 BeforeValidator(_integral)]


class GenerateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={
        "examples": [{"prompt": "The company said ", "max_chars": 120, "temperature": 0.6, "seed": 7}]})

    prompt: StrictStr = Field(description="The text to continue (at least one character).")
    max_chars: Integer = Field(200, ge=1, description="Characters to generate (at most the server's "
                                 "MAX_GENERATE_CHARS, else 413).")
    temperature: StrictFloat = Field(1.0, ge=0.0, le=10.0, description="Sampling temperature; 0 always takes the most "
                               "probable character.")
    top_k: Integer = Field(0, ge=0, description="Sample among the k most probable characters only (0: all).")
    seed: Seed | None = Field(
        None, description="Random seed, 0 to 2^64 - 1 (null: none): the same seed, prompt and settings give the "
        "same text.")
    stream: StrictBool = Field(False, description="Send the characters as server-sent events as they come "
                               "(text/event-stream) instead of one JSON answer.")


class V2GenerateParameters(BaseModel):
    """The generate extension's sampling parameters (the same meaning as /v1's generate options)."""

    model_config = ConfigDict(extra="forbid")
    max_tokens: Integer = Field(200, ge=1, description="Characters to generate (at most MAX_GENERATE_CHARS).")
    temperature: StrictFloat = Field(1.0, ge=0.0, le=10.0)
    top_k: Integer = Field(0, ge=0)
    seed: Seed | None = None


class V2GenerateRequest(BaseModel):
    """Triton's generate extension: `text_input` -> `text_output`."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={
        "examples": [{"text_input": "The company said ", "parameters": {"max_tokens": 80, "temperature": 0.6}}]})
    text_input: StrictStr
    parameters: V2GenerateParameters = V2GenerateParameters()


class GenerateResponse(BaseModel):
    model: str
    version: int
    prompt: str
    text: str = Field(description="The generated continuation (without the prompt).")
    chars: int
    seed: int | None


class LabelProbability(BaseModel):
    label: str
    probability: float


class TokenInfo(BaseModel):
    kept: int = Field(description="Token ids fed to the model (start token included, padding excluded).")
    oov: int = Field(description="Words out of the model's vocabulary (mapped to OOV or dropped).")
    truncated: bool = Field(description="The text had more tokens than the model's maxlen.")


class Prediction(BaseModel):
    label: str | SkipJsonSchema[None] = Field(None, description="The most probable class (classifiers).")
    score: float | SkipJsonSchema[None] = Field(None, description="Probability of `label`.")
    top_k: list[LabelProbability] | SkipJsonSchema[None] = None
    probabilities: dict[str, float] | SkipJsonSchema[None] = None
    tokens: TokenInfo | SkipJsonSchema[None] = Field(None, description="Text classifiers: what the tokenizer did.")
    value: float | SkipJsonSchema[None] = Field(None, description="Sequence regression: the predicted value.")
    values: list[float] | SkipJsonSchema[None] = Field(None, description="Per-step sequence regression: one "
                                                       "value per step.")


class PredictResponse(BaseModel):
    model: str
    version: int
    predictions: list[Prediction]


class ExplainedWord(BaseModel):
    text: str = Field(description="The word as written: the request's text[start:end].")
    token: str = Field(description="The word as the model's vocabulary sees it: after the package's "
                       "normalization (typographic quotes, dashes, Unicode forms), lower-casing and filters.")
    start: int = Field(description="Character offset of the word in the text (Python string indices).")
    end: int
    id: int | None = Field(description="Its token id; null when the model does not see it.")
    status: Literal["kept", "oov", "dropped", "truncated"] = Field(
        description="kept; oov: kept as the out-of-vocabulary id; dropped: unknown to the vocabulary and "
                    "left out; truncated: cut because the text is longer than the model's maxlen.")
    contribution: float = Field(description="p(label | text) - p(label | text without this word): positive "
                                "words support the label. 0 for words the model does not see.")


class ExplainResponse(BaseModel):
    model: str
    version: int
    prediction: Prediction = Field(description="The text's prediction, as /predict gives it, with every "
                                   "label's probability.")
    label: str = Field(description="The label whose probability the contributions explain.")
    method: Literal["occlusion", "window"]
    window: int = Field(description="Words left out per run (1 for occlusion).")
    runs: int = Field(description="Texts the model ran: the text and each variant.")
    words: list[ExplainedWord]


class ErrorBody(BaseModel):
    code: str
    message: str


class ErrorResponse(BaseModel):
    error: ErrorBody


class V2Error(BaseModel):
    error: str


class ModelList(BaseModel):
    models: list[dict]


class Health(BaseModel):
    status: str
    models_loaded: int = 0
    models_failed: int = 0
    problems: list[str] | SkipJsonSchema[None] = Field(None, description="What does not work, when anything: state "
                                                       "the server cannot write, a model store (MODELS_DIR s3://, "
                                                       "gs://, az://) it could not read at the last try (until it "
                                                       "first reads it, the server is not ready)")
