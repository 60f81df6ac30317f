"""Shaping answers from what the runtimes and the registry know: /v1 predictions, model descriptions (/v1/models
and the page), and Triton's repository index."""

from __future__ import annotations

from functools import singledispatch

import numpy as np

from rnnserve.service.core.errors import NotFound, echo
from rnnserve.service.registry import Registry
from rnnserve.service.runtime.base import ModelRuntime
from rnnserve.service.runtime.generator import TextGenerator
from rnnserve.service.runtime.sequence import SequenceModel
from rnnserve.service.runtime.text import ClassificationResult, TextClassifier


def to_predictions(labels: list[str], result: ClassificationResult, top_k: int = 1,
                   return_probabilities: bool = False) -> list[dict]:
    preds = class_predictions(labels, result.probabilities, top_k, return_probabilities)
    for pred, st in zip(preds, result.token_stats):
        pred["tokens"] = {"kept": st.kept, "oov": st.oov, "truncated": st.truncated}
    return preds


def class_predictions(labels: list[str], probs: np.ndarray, top_k: int = 1,
                      return_probabilities: bool = False) -> list[dict]:
    k = min(top_k, len(labels))
    out = []
    for p in probs.tolist():
        # Python's sort is stable with reverse=True too: ties keep the lower label index first, as argmax.
        idx = sorted(range(len(p)), key=p.__getitem__, reverse=True)[:k]
        pred = {
            "label": labels[idx[0]],
            "score": p[idx[0]],
            "top_k": [{"label": labels[j], "probability": p[j]} for j in idx],
        }
        if return_probabilities:
            pred["probabilities"] = dict(zip(labels, p))
        out.append(pred)
    return out


def value_predictions(values: np.ndarray) -> list[dict]:
    """Regression outputs [N, 1] -> {"value"}; per step [N, T, 1] -> {"values"}."""
    if values.ndim == 3:
        return [{"values": row} for row in values[..., 0].tolist()]
    return [{"value": row[0]} for row in values.tolist()]


def model_listing(registry: Registry, name: str) -> dict:
    """/v1/models/{name}: the newest loaded version described, every loaded version, the failed ones with
    their reasons. NotFound (404) for a name the registry has not seen."""
    versions, failed = registry.versions(name), registry.failed(name)
    if not versions and not failed:
        raise NotFound(f"model {echo(name)} not found")
    # A version in the registry has loaded, been checked and warmed: ready.
    latest = describe(versions[max(versions)]) | {"state": "ready"} if versions else {"name": name, "state": "failed"}
    return latest | {"versions": [describe(v) | {"state": "ready"} for _, v in sorted(versions.items())],
                     "failed_versions": [{"version": v, "reason": r} for v, r in sorted(failed.items())]}


def repository_index(registry: Registry) -> list[dict]:
    """Triton's repository index: every version on disk or loaded, with its state (READY or UNAVAILABLE)."""
    rows = {(name, version): {"name": name, "version": version, "state": "UNAVAILABLE", "reason": "not loaded"}
            for name, version in registry.on_disk()}
    for name in registry.names():
        for version, reason in registry.failed(name).items():
            rows[(name, version)] = {"name": name, "version": version, "state": "UNAVAILABLE", "reason": reason}
        for version in registry.versions(name):
            rows[(name, str(version))] = {"name": name, "version": str(version), "state": "READY", "reason": ""}
    return [rows[k] for k in sorted(rows)]


@singledispatch
def describe(model: ModelRuntime) -> dict:
    """What a loaded model version is: its task, labels, provenance and figures, how it runs."""
    meta = model.package.metadata
    return {"name": model.name, "version": model.version, "task": model.task, "labels": model.labels,
            "architecture": meta.architecture, "maxlen": model.package.maxlen, "dataset": meta.dataset,
            "metrics": meta.metrics, "source": meta.source or {"kind": "trained"},
            "provider": model.session.provider, "threads": model.session.threads,
            "max_batch_size": model.batcher.max_batch_size, "plots": model.package.plots}


@describe.register
def _(model: TextClassifier) -> dict:
    spec = model.package.tokenizer
    return describe.dispatch(ModelRuntime)(model) | {
        "padding": spec.padding, "truncating": spec.truncating, "vocab_size": spec.vocab_size,
        "tokenizer": model.tokenizer.implementation}


@describe.register
def _(model: SequenceModel) -> dict:
    steps, features = model.shape
    return describe.dispatch(ModelRuntime)(model) | {
        "input": {"steps": steps, "features": features, "normalization": model.package.metadata.input.normalization},
        "per_step": model.per_step}


@describe.register
def _(model: TextGenerator) -> dict:
    return describe.dispatch(ModelRuntime)(model) | {
        "characters": len(model.chars), "vocab_size": model.package.tokenizer.vocab_size,
        "tokenizer": model.tokenizer.implementation}
