"""The model package format: read and validate a package directory (pure: no onnxruntime, no HTTP).

A package is NAME/VERSION/ holding model.onnx, metadata.json (PackageMetadata: written by export, validated
here, so a bad field is named at export or at load), for the tasks that read text tokenizer.json, and
manifest.json: every other file of the package with its size and sha256, written last by whatever writes a
package (`seal`). A package is read whole or refused: a file missing, added or changed (against the manifest)
is named in the PackageError, and the files the server loads (graphs, tokenizer, metadata) are parsed from the
very bytes that were checked (`Package.read`), so nothing can change between the check and the load.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, NonNegativeFloat, NonNegativeInt, PositiveInt, ValidationError
from typing_extensions import TypedDict  # pydantic reads typing.TypedDict only from Python 3.12

from rnnserve.service.core.errors import ServiceError
from rnnserve.service.core.tokenizer import TokenizerSpec

PACKAGE_FORMAT = "rnnserve-package/1"
MANIFEST_FORMAT = "rnnserve-manifest/1"
MANIFEST = "manifest.json"
INPUT_NAME = "input_ids"
OUTPUT_NAME = "probabilities"
SEQUENCE_INPUT = "sequences"  # numeric-sequence packages: float32 [N, T, F]
VALUES_OUTPUT = "values"  # sequence regression: [N, 1], or [N, T, 1] per step
LOGITS_OUTPUT = "logits"  # language models: the next character's logits [N, vocab]
REQUIRED_FILES = ("model.onnx", "metadata.json")  # and tokenizer.json for the tasks that read text
MAX_MANIFEST_BYTES = 1 << 20  # a manifest lists a handful of files: a larger one is no manifest
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


class ManifestEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    bytes: NonNegativeInt
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class Manifest(BaseModel):
    """manifest.json: every file of the package but itself (plain file names: a package has no folders)."""

    model_config = ConfigDict(extra="forbid")
    format: Literal["rnnserve-manifest/1"]
    files: dict[str, ManifestEntry]


@dataclass
class Package:
    name: str
    version: int
    path: Path
    metadata: PackageMetadata
    tokenizer: TokenizerSpec | None  # None for numeric-sequence packages
    manifest: Manifest = field(default_factory=lambda: Manifest(format=MANIFEST_FORMAT, files={}))
    digest: str = ""  # sha256 of manifest.json: the whole package's identity

    def read(self, filename: str) -> bytes:
        """A file of the package as checked against the manifest: its bytes, or PackageError (the file missing,
        or changed since the package was read)."""
        return read_checked(self.path, filename, self.manifest)

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
    """Validate the package whole: the manifest against the directory's files and their sha256, then the
    metadata, the tokenizer spec and the files the task needs; raise PackageError with the reason (the file
    named)."""
    path = Path(path)
    name, version = path.parent.name, path.name
    if not NAME_RE.fullmatch(name) or not VERSION_RE.fullmatch(version):
        raise PackageError(f"{path}: expected MODELS/NAME/VERSION with a numeric version")
    if not path.is_dir():
        raise PackageError(f"{path}: no package directory here")
    manifest_bytes = _read(path, MANIFEST, MAX_MANIFEST_BYTES)
    manifest = parse_manifest(manifest_bytes)
    check_files(path, manifest)
    metadata = parse_metadata(read_checked(path, "metadata.json", manifest).removeprefix(codecs.BOM_UTF8))
    task = metadata.task
    required = (*REQUIRED_FILES, "tokenizer.json") if task.reads_text else REQUIRED_FILES
    missing = [f for f in required if f not in manifest.files]
    if missing:
        raise PackageError(f"missing {', '.join(missing)}")
    if task.classifies and len(metadata.labels) < 2:
        raise PackageError("a classifier's metadata labels must name two or more classes")
    if not task.reads_text:
        shape = metadata.input.shape
        if not (len(shape) == 3 and all(isinstance(d, int) and d > 0 for d in shape[1:])):
            raise PackageError(f"a sequence package declares its input shape [null, T, F]; got {shape!r}")
    if metadata.stepwise is not None and not (
            STEPWISE_RE.fullmatch(metadata.stepwise) and metadata.stepwise in manifest.files and metadata.state):
        raise PackageError(f"stepwise {metadata.stepwise!r} must name a .onnx file beside model.onnx, with its state")
    if manifest.files["model.onnx"].sha256 != metadata.onnx.sha256:
        raise PackageError(f"model.onnx sha256 {manifest.files['model.onnx'].sha256[:12]}... in the manifest does "
                           f"not match metadata ({metadata.onnx.sha256[:12]}...)")
    spec = None
    if task.reads_text:
        try:
            spec = TokenizerSpec.from_dict(json.loads(read_checked(path, "tokenizer.json", manifest)))
        except (ValueError, TypeError) as exc:
            raise PackageError(f"tokenizer.json is invalid: {exc}") from exc
        if spec.maxlen != metadata.maxlen:
            raise PackageError(f"tokenizer maxlen {spec.maxlen} differs from metadata maxlen {metadata.maxlen}")
    return Package(name=name, version=int(version), path=path, metadata=metadata, tokenizer=spec,
                   manifest=manifest, digest=hashlib.sha256(manifest_bytes).hexdigest())


def parse_manifest(raw: bytes) -> Manifest:
    try:
        manifest = Manifest.model_validate_json(raw)
    except ValidationError as exc:
        fields = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'manifest'}: {e['msg']}"
                           for e in exc.errors(include_url=False))
        raise PackageError(f"{MANIFEST} is invalid: {fields}") from None
    bad = [f for f in manifest.files if f == MANIFEST or not _plain_name(f)]
    if bad:
        raise PackageError(f"{MANIFEST} names {bad[0]!r}: a package's files are plain names beside it")
    return manifest


def check_files(path: Path, manifest: Manifest) -> None:
    """The directory holds exactly the manifest's files, each of its size and sha256: PackageError naming the
    first that is missing, added or changed."""
    try:
        present = {entry.name: entry for entry in os.scandir(path)}
    except OSError as exc:
        raise PackageError(f"the package directory is not readable: {exc.strerror}") from None
    added = sorted(set(present) - set(manifest.files) - {MANIFEST})
    if added:
        raise PackageError(f"{added[0]} is not in {MANIFEST}: a file added to a package after it was written is "
                           "refused (write the package again, or remove the file)")
    for filename, entry in sorted(manifest.files.items()):
        found = present.get(filename)
        if found is None:
            raise PackageError(f"missing {filename}: {MANIFEST} lists it")
        if not found.is_file(follow_symlinks=False):
            raise PackageError(f"{filename} is not a plain file (a link or a folder is refused)")
        if sha256_file(Path(found.path)) != entry.sha256:
            raise PackageError(f"{filename} was changed: its sha256 differs from {MANIFEST}'s")


def read_checked(path: Path, filename: str, manifest: Manifest) -> bytes:
    """A listed file's bytes, checked against its manifest entry (PackageError if missing or changed)."""
    entry = manifest.files.get(filename)
    if entry is None:
        raise PackageError(f"{filename} is not in {MANIFEST}")
    data = _read(path, filename, entry.bytes)
    if len(data) != entry.bytes or hashlib.sha256(data).hexdigest() != entry.sha256:
        raise PackageError(f"{filename} was changed: its sha256 differs from {MANIFEST}'s")
    return data


def _read(path: Path, filename: str, limit: int) -> bytes:
    """At most limit + 1 bytes of a plain file of the package (a longer file is then known to differ)."""
    try:
        with open(path / filename, "rb") as fh:
            return fh.read(limit + 1)
    except FileNotFoundError:
        hint = (" (a package written before the whole-package manifest: `rnnserve-train seal DIR` adds one)"
                if filename == MANIFEST else "")
        raise PackageError(f"missing {filename}{hint}") from None
    except OSError as exc:
        raise PackageError(f"{filename} is not readable: {exc.strerror}") from None


def _plain_name(filename: str) -> bool:
    return filename not in ("", ".", "..") and "/" not in filename and "\\" not in filename and "\0" not in filename


def seal(path: str | Path) -> Manifest:
    """Write manifest.json for the package directory's files as they are now (the last file a writer writes:
    a reader that finds it finds the whole package). Returns the manifest."""
    path = Path(path)
    files = {entry.name: ManifestEntry(bytes=entry.stat().st_size, sha256=sha256_file(Path(entry.path)))
             for entry in sorted(os.scandir(path), key=lambda e: e.name)
             if entry.name != MANIFEST and not entry.name.startswith(f".{MANIFEST}")}
    manifest = Manifest(format=MANIFEST_FORMAT, files=files)
    tmp = path / f".{MANIFEST}.{os.getpid()}.tmp"
    tmp.write_text(manifest.model_dump_json(indent=2) + "\n")
    os.replace(tmp, path / MANIFEST)
    return manifest


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
