"""Request and response models of the /v1 API (they also document it in OpenAPI)."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, model_validator
from pydantic.json_schema import SkipJsonSchema


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={
        "oneOf": [{"required": ["texts"]}, {"required": ["text"]}],
        "examples": [{"texts": ["a wonderful, moving film", "dull and far too long"], "top_k": 2}]})

    texts: Annotated[list[StrictStr], Field(min_length=1)] | SkipJsonSchema[None] = Field(
        None, description="Texts to classify (or use `text`).")
    text: StrictStr | SkipJsonSchema[None] = Field(None, description="One text to classify (or use `texts`).")
    top_k: StrictInt = Field(1, ge=1, le=1000, description="How many of the most probable labels to return per text.")
    return_probabilities: StrictBool = Field(False, description="Also return every label's probability.")

    @model_validator(mode="after")
    def exactly_one_input(self) -> "PredictRequest":
        if (self.texts is None) == (self.text is None):
            raise ValueError("give exactly one of 'text' or 'texts'")
        return self

    @property
    def all_texts(self) -> list[str]:
        return self.texts if self.texts is not None else [self.text]


class LabelProbability(BaseModel):
    label: str
    probability: float


class TokenInfo(BaseModel):
    kept: int = Field(description="Token ids fed to the model (start token included, padding excluded).")
    oov: int = Field(description="Words out of the model's vocabulary (mapped to OOV or dropped).")
    truncated: bool = Field(description="The text had more tokens than the model's maxlen.")


class Prediction(BaseModel):
    label: str
    score: float = Field(description="Probability of `label`.")
    top_k: list[LabelProbability]
    probabilities: dict[str, float] | SkipJsonSchema[None] = None
    tokens: TokenInfo


class PredictResponse(BaseModel):
    model: str
    version: int
    predictions: list[Prediction]


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
