"""The model package format: read and validate a package directory (pure: no onnxruntime, no HTTP).

A package is NAME/VERSION/ holding model.onnx, metadata.json (PackageMetadata: written by export, validated
here, so a bad field is named at export or at load) and, for the tasks that read text, tokenizer.json; the
sha256 of model.onnx must match the metadata, and the tokenizer spec must load.
"""

from __future__ import annotations

import codecs
import hashlib
import re
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, NonNegativeFloat, PositiveInt, ValidationError
from typing_extensions import TypedDict  # pydantic reads typing.TypedDict only from Python 3.12

from rnnserve.service.core.errors import ServiceError
from rnnserve.service.core.tokenizer import TokenizerSpec

PACKAGE_FORMAT = "rnnserve-package/1"
INPUT_NAME = "input_ids"
OUTPUT_NAME = "probabilities"
SEQUENCE_INPUT = "sequences"  # numeric-sequence packages: float32 [N, T, F]
VALUES_OUTPUT = "values"  # sequence regression: [N, 1], or [N, T, 1] per step
LOGITS_OUTPUT = "logits"  # language models: the next character's logits [N, vocab]
REQUIRED_FILES = ("model.onnx", "metadata.json")  # and tokenizer.json for the tasks that read text
# Names and versions come from URLs: these patterns keep every lookup inside the repository.
# Used with fullmatch: "$" alone would let a trailing newline through ("1\n").
# no "..", no "/", no leading dot; at most 128 characters (a file name has 255 bytes at most)
NAME_RE = re.compile(r"(?=.{1,128}$)[A-Za-z0-9][A-Za-z0-9_-]*(\.[A-Za-z0-9_-]+)*")
VERSION_RE = re.compile(r"[0-9]{1,9}")
STEPWISE_RE = re.compile(r"[A-Za-z0-9_-]+\.onnx")  # a file name, nothing of a path
PLOT_RE = re.compile(r"[A-Za-z0-9_-]+\.png")  # the training plots a package may carry, served to the page


class PackageError(ServiceError):
    """A package failed validation; the message says why (over HTTP: a failed load, 400)."""

    status, code = 400, "load_failed"


class Task(StrEnum):
    """What a package's model does; each runtime runs one or more."""

    TEXT_CLASSIFICATION = "text-classification"
    SEQUENCE_CLASSIFICATION = "sequence-classification"
    SEQUENCE_REGRESSION = "sequence-regression"
    TEXT_GENERATION = "text-generation"

    @property
    def reads_text(self) -> bool:
        return self in (Task.TEXT_CLASSIFICATION, Task.TEXT_GENERATION)

    @property
    def classifies(self) -> bool:
        return self in (Task.TEXT_CLASSIFICATION, Task.SEQUENCE_CLASSIFICATION)


class Normalization(TypedDict):
    """Per-feature statistics of the fitted sequences: the service feeds (x - mean) / std."""

    mean: list[float]
    std: list[float]


class StateSpec(TypedDict):
    """One recurrent layer's carried state in a step-wise graph: input and output names, shape [1, N, H]."""

    input: str
    output: str
    shape: list[int | None]


class TensorSpec(BaseModel):
    """A graph input or output: its name, dtype and shape (null for a dynamic axis)."""

    model_config = ConfigDict(extra="forbid")
    name: str
    dtype: Literal["int64", "float32"]
    shape: list[int | None]
    normalization: Normalization | None = None  # sequence inputs


class Serving(BaseModel):
    """Per-package overrides of the server's batch settings."""

    model_config = ConfigDict(extra="forbid")
    max_batch_size: PositiveInt | None = None
    max_batch_delay_ms: NonNegativeFloat | None = None


class OnnxInfo(BaseModel):
    file: Literal["model.onnx"] = "model.onnx"
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    opset: int | None = None
    op_types: list[str] = []


class PackageMetadata(BaseModel):
    """metadata.json. The free-form sections (architecture, dataset, metrics, parity, training, versions)
    describe where the model came from and how it scored; the rest is what serving reads."""

    model_config = ConfigDict(extra="forbid")
    format: Literal["rnnserve-package/1"]
    name: str
    version: int
    task: Task = Task.TEXT_CLASSIFICATION
    labels: list[str] = Field(description="class names in output order; empty for regression and generation")
    maxlen: PositiveInt
    input: TensorSpec
    output: TensorSpec
    dynamic_length: bool = Field(False, description="masked model: pad to the batch's longest text")
    state: list[StateSpec] = Field([], description="the step-wise graph's carried state, one pair a recurrent "
                                   "node: the language model's model.onnx, or a numeric model's `stepwise` file")
    stepwise: str | None = Field(None, description="a numeric-sequence package's step-wise graph (the V2 sequence "
                                 "extension), a file beside model.onnx")
    serving: Serving = Serving()
    padding: Literal["pre", "post"] | None = None
    truncating: Literal["pre", "post"] | None = None
    onnx: OnnxInfo
    architecture: dict = {}
    dataset: dict = {}
    metrics: dict = {}
    parity: dict = {}
    quantization: dict = Field({}, description="INT8 packages: what was quantized, from which package, and "
                               "the accuracy gate's figures (training/quantize.py)")
    distillation: dict = Field({}, description="a student's teacher {name, version, sha256, test_accuracy}, "
                               "temperature and alpha (training/distill.py); empty otherwise")
    source: dict = Field({}, description="where the model came from: empty for a package trained here; an "
                         "import's {kind: imported, file, format, sha256, output, preprocessing, keras_version}")
    training: dict = {}
    versions: dict = {}
    created_at: str | None = None


@dataclass
class Package:
    name: str
    version: int
    path: Path
    metadata: PackageMetadata
    tokenizer: TokenizerSpec | None  # None for numeric-sequence packages

    @property
    def task(self) -> Task:
        return self.metadata.task

    @property
    def labels(self) -> list[str]:
        return self.metadata.labels

    @property
    def maxlen(self) -> int:
        return self.metadata.maxlen

    @property
    def plots(self) -> list[str]:
        """The package's own PNG files: plain files inside its directory (a link leading out of it is no plot)."""
        root = self.path.resolve()
        try:
            return sorted(p.name for p in self.path.iterdir() if PLOT_RE.fullmatch(p.name) and p.is_file()
                          and p.resolve().parent == root)
        except OSError:  # the directory went while the version is loaded (removed on disk, not yet unloaded)
            return []


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_package(path: str | Path) -> Package:
    """Validate files, metadata, checksum and tokenizer; raise PackageError with the reason."""
    path = Path(path)
    name, version = path.parent.name, path.name
    if not NAME_RE.fullmatch(name) or not VERSION_RE.fullmatch(version):
        raise PackageError(f"{path}: expected MODELS/NAME/VERSION with a numeric version")
    missing = [f for f in REQUIRED_FILES if not (path / f).is_file()]
    if missing:
        raise PackageError(f"missing {', '.join(missing)}")
    try:
        raw = (path / "metadata.json").read_bytes().removeprefix(codecs.BOM_UTF8)  # an editor's BOM is no error
    except OSError as exc:
        raise PackageError(f"metadata.json is not readable: {exc}") from exc
    metadata = parse_metadata(raw)
    task = metadata.task
    if task.classifies and len(metadata.labels) < 2:
        raise PackageError("a classifier's metadata labels must name two or more classes")
    if not task.reads_text:
        shape = metadata.input.shape
        if not (len(shape) == 3 and all(isinstance(d, int) and d > 0 for d in shape[1:])):
            raise PackageError(f"a sequence package declares its input shape [null, T, F]; got {shape!r}")
    elif not (path / "tokenizer.json").is_file():
        raise PackageError("missing tokenizer.json")
    if metadata.stepwise is not None and not (
            STEPWISE_RE.fullmatch(metadata.stepwise) and (path / metadata.stepwise).is_file() and metadata.state):
        raise PackageError(f"stepwise {metadata.stepwise!r} must name a .onnx file beside model.onnx, with its state")
    expected = metadata.onnx.sha256
    actual = sha256_file(path / "model.onnx")
    if expected != actual:
        raise PackageError(f"model.onnx sha256 {actual[:12]}... does not match metadata ({expected[:12]}...)")
    spec = None
    if task.reads_text:
        try:
            spec = TokenizerSpec.load(path / "tokenizer.json")
        except (OSError, ValueError, TypeError) as exc:
            raise PackageError(f"tokenizer.json is invalid: {exc}") from exc
        if spec.maxlen != metadata.maxlen:
            raise PackageError(f"tokenizer maxlen {spec.maxlen} differs from metadata maxlen {metadata.maxlen}")
    return Package(name=name, version=int(version), path=path, metadata=metadata, tokenizer=spec)


def parse_metadata(raw: bytes | str | dict) -> PackageMetadata:
    """metadata.json (as JSON, or a dict export is about to write) -> PackageMetadata; PackageError naming
    every field that is wrong."""
    try:
        if isinstance(raw, dict):
            return PackageMetadata.model_validate(raw)
        return PackageMetadata.model_validate_json(raw)
    except ValidationError as exc:
        if any(e["type"] == "json_invalid" for e in exc.errors()):
            raise PackageError("metadata.json is not valid JSON") from None
        fields = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'metadata'}: {e['msg']}"
                           for e in exc.errors(include_url=False))
        raise PackageError(f"metadata.json: {fields}") from None


def check_io(package: Package, inputs: list, outputs: list, stepwise: bool = False) -> None:
    """Compare an ONNX session's declared inputs/outputs with the metadata (duck-typed NodeArgs). stepwise:
    the session runs the package's `stepwise` file (the state pairs are its, and it takes any T)."""
    meta = package.metadata
    by_name_in = {i.name: i for i in inputs}
    by_name_out = {o.name: o for o in outputs}
    states = meta.state if stepwise or meta.stepwise is None else []
    want_in = [meta.input.name, *(s["input"] for s in states)]
    want_out = [meta.output.name, *(s["output"] for s in states)]
    if list(by_name_in) != want_in:
        raise PackageError(f"model inputs are {list(by_name_in)}, expected {want_in}")
    if not set(want_out) <= set(by_name_out):
        raise PackageError(f"model outputs {list(by_name_out)} lack {sorted(set(want_out) - set(by_name_out))}")
    if package.task != Task.TEXT_CLASSIFICATION:
        shape = by_name_in[want_in[0]].shape
        if package.task != Task.TEXT_GENERATION and not stepwise and \
                [d if isinstance(d, int) else None for d in shape[1:]] != meta.input.shape[1:]:
            raise PackageError(f"model input shape {shape} differs from the metadata's {meta.input.shape}")
        return
    in_shape = by_name_in[INPUT_NAME].shape
    out_shape = by_name_out[OUTPUT_NAME].shape
    if len(in_shape) != 2 or (isinstance(in_shape[1], int) and in_shape[1] != package.maxlen):
        raise PackageError(f"model input shape {in_shape} does not take maxlen {package.maxlen}")
    if len(out_shape) != 2 or (isinstance(out_shape[1], int) and out_shape[1] != len(package.labels)):
        raise PackageError(f"model output shape {out_shape} does not give {len(package.labels)} classes")


def scan_repository(root: Path, nested: bool = True) -> list[Path]:
    """Every NAME/VERSION directory under root, or with nested=False every VERSION directory of the
    model directory root (dot-directories, e.g. exports in progress, are skipped)."""
    if not root.is_dir():
        return []
    names = [n for n in root.iterdir() if n.is_dir() and not n.name.startswith(".")] if nested else [root]
    return sorted(v for n in names for v in n.iterdir() if v.is_dir() and not v.name.startswith("."))
