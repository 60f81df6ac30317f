"""Read and validate a model package directory (pure: no onnxruntime, no HTTP).

A package is NAME/VERSION/ holding model.onnx, tokenizer.json and metadata.json; the sha256 of
model.onnx must match the metadata, and the tokenizer spec must load.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

from rnnserve.service.core.errors import ServiceError
from rnnserve.service.core.tokenizer import TokenizerSpec

PACKAGE_FORMAT = "rnnserve-package/1"
INPUT_NAME = "input_ids"
OUTPUT_NAME = "probabilities"
SEQUENCE_INPUT = "sequences"  # numeric-sequence packages: float32 [N, T, F]
VALUES_OUTPUT = "values"  # sequence regression: [N, 1], or [N, T, 1] per step
LOGITS_OUTPUT = "logits"  # language models: the next character's logits [N, vocab]
REQUIRED_FILES = ("model.onnx", "metadata.json")  # and tokenizer.json for the tasks that read text
TEXT_TASKS = ("text-classification", "text-generation")
TASKS = (*TEXT_TASKS, "sequence-classification", "sequence-regression")
CLASSIFICATION_TASKS = ("text-classification", "sequence-classification")
# Names and versions come from URLs: these patterns keep every lookup inside the repository.
# Used with fullmatch: "$" alone would let a trailing newline through ("1\n").
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*(\.[A-Za-z0-9_-]+)*")  # no "..", no "/", no leading dot
VERSION_RE = re.compile(r"[0-9]{1,9}")
PLOT_RE = re.compile(r"[A-Za-z0-9_-]+\.png")  # the training plots a package may carry, served to the page


class PackageError(ServiceError):
    """A package failed validation; the message says why (over HTTP: a failed load, 400)."""

    status, code = 400, "load_failed"


@dataclass
class Package:
    name: str
    version: int
    path: Path
    metadata: dict
    tokenizer: TokenizerSpec | None  # None for numeric-sequence packages

    @property
    def task(self) -> str:
        return self.metadata.get("task", "text-classification")

    @property
    def labels(self) -> list[str]:
        return self.metadata["labels"]

    @property
    def maxlen(self) -> int:
        return self.metadata["maxlen"]

    @property
    def plots(self) -> list[str]:
        """The package's own PNG files: plain files inside its directory (a link leading out of it is no plot)."""
        root = self.path.resolve()
        return sorted(p.name for p in self.path.iterdir() if PLOT_RE.fullmatch(p.name) and p.is_file()
                      and p.resolve().parent == root)


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
        metadata = json.loads((path / "metadata.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise PackageError(f"metadata.json is not readable JSON: {exc}") from exc
    if not isinstance(metadata, dict) or metadata.get("format") != PACKAGE_FORMAT:
        raise PackageError(f"metadata.json format is not {PACKAGE_FORMAT!r}")
    for key in ("labels", "maxlen", "onnx", "input", "output"):
        if key not in metadata:
            raise PackageError(f"metadata.json lacks {key!r}")
    task = metadata.get("task", "text-classification")
    if task not in TASKS:
        raise PackageError(f"unknown task {task!r}; this server runs {', '.join(TASKS)}")
    labels = metadata["labels"]
    if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
        raise PackageError("metadata labels must be a list of strings")
    if task in CLASSIFICATION_TASKS and len(labels) < 2:
        raise PackageError("a classifier's metadata labels must name two or more classes")
    if task not in TEXT_TASKS:
        shape = metadata["input"].get("shape")
        if not (isinstance(shape, list) and len(shape) == 3 and all(isinstance(d, int) and d > 0 for d in shape[1:])):
            raise PackageError(f"a sequence package declares its input shape [null, T, F]; got {shape!r}")
    elif not (path / "tokenizer.json").is_file():
        raise PackageError("missing tokenizer.json")
    expected = metadata["onnx"].get("sha256")
    actual = sha256_file(path / "model.onnx")
    if expected != actual:
        raise PackageError(f"model.onnx sha256 {actual[:12]}... does not match metadata ({str(expected)[:12]}...)")
    spec = None
    if task in TEXT_TASKS:
        try:
            spec = TokenizerSpec.load(path / "tokenizer.json")
        except (OSError, ValueError, TypeError) as exc:
            raise PackageError(f"tokenizer.json is invalid: {exc}") from exc
        if spec.maxlen != metadata["maxlen"]:
            raise PackageError(f"tokenizer maxlen {spec.maxlen} differs from metadata maxlen {metadata['maxlen']}")
    return Package(name=name, version=int(version), path=path, metadata=metadata, tokenizer=spec)


def check_io(package: Package, inputs: list, outputs: list) -> None:
    """Compare an ONNX session's declared inputs/outputs with the metadata (duck-typed NodeArgs)."""
    meta = package.metadata
    by_name_in = {i.name: i for i in inputs}
    by_name_out = {o.name: o for o in outputs}
    states = meta.get("state", [])
    want_in = [meta["input"]["name"], *(s["input"] for s in states)]
    want_out = [meta["output"]["name"], *(s["output"] for s in states)]
    if list(by_name_in) != want_in:
        raise PackageError(f"model inputs are {list(by_name_in)}, expected {want_in}")
    if not set(want_out) <= set(by_name_out):
        raise PackageError(f"model outputs {list(by_name_out)} lack {sorted(set(want_out) - set(by_name_out))}")
    if package.task != "text-classification":
        shape = by_name_in[want_in[0]].shape
        if package.task != "text-generation" and [d if isinstance(d, int) else None for d in shape[1:]] != \
                meta["input"]["shape"][1:]:
            raise PackageError(f"model input shape {shape} differs from the metadata's {meta['input']['shape']}")
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
