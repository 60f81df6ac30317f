"""Shaping answers from what the runtimes and the registry know: /v1 predictions, model descriptions (/v1/models
and the page), Triton's repository index and the statistics extension's model_stats."""

from __future__ import annotations

from functools import singledispatch

import numpy as np

from rnnserve.service.core.errors import NotFound, echo
from rnnserve.service.metrics import COMPUTE, VersionStatistics
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


def model_stats(registry: Registry, statistics: dict[tuple[str, str], VersionStatistics], name: str | None = None,
                version: str | None = None) -> list[dict]:
    """The statistics extension's `model_stats` (Triton's shapes; durations {count, ns}; last_inference in ms
    since the epoch) for every loaded version of every model, of one model, or one version, from the whole
    server's figures (Metrics.statistics). success/fail count predict requests (/v1 predict, V2 infer over HTTP
    and gRPC, scoring's chunks); queue and compute_* count the requests the batcher ran, an explanation's and a
    generation's runs included; a request over max_batch_size inputs is several. NotFound (404) or NotReady
    (503) for a model or version that is not loaded."""
    if name is None:
        models = [model for each in registry.names() for model in registry.versions(each).values()]
    elif version is None:
        models = list(registry.versions(name).values()) or [registry.get(name)]
    else:
        models = [registry.get(name, version)]
    return [_version_stats(model, statistics.get((model.name, str(model.version)), VersionStatistics()))
            for model in sorted(models, key=lambda m: (m.name, m.version))]


def _version_stats(model: ModelRuntime, stats: VersionStatistics) -> dict:
    counts, seconds = stats.counts, stats.seconds

    def duration(count: float, total: float) -> dict:
        return {"count": int(count), "ns": round(total * 1e9)}

    requests = counts.get(("queue", 0), 0)
    sizes = sorted(size for stat, size in counts if stat == "execution" and size)
    return {
        "name": model.name, "version": str(model.version), "last_inference": round(stats.last_inference * 1000),
        "inference_count": int(counts.get(("inference", 0), 0)),
        "execution_count": int(counts.get(("execution", 0), 0)),
        "inference_stats": {
            **{stat: duration(counts.get((stat, 0), 0), seconds.get((stat, 0), 0.0))
               for stat in ("success", "fail", "queue")},
            **{stat: duration(requests, seconds.get((stat, 0), 0.0)) for stat in COMPUTE},
            "cache_hit": duration(0, 0.0), "cache_miss": duration(0, 0.0)},
        "batch_stats": [{"batch_size": size, **{stat: duration(counts[("execution", size)],
                                                               seconds.get((stat, size), 0.0))
                                                for stat in COMPUTE}} for size in sizes],
    }


@singledispatch
def describe(model: ModelRuntime) -> dict:
    """What a loaded model version is: its task, labels, provenance and figures, how it runs."""
    meta = model.package.metadata
    return {"name": model.name, "version": model.version, "task": model.task, "labels": model.labels,
            "architecture": meta.architecture, "maxlen": model.package.maxlen, "dataset": meta.dataset,
            "metrics": meta.metrics, "source": meta.source or {"kind": "trained"},
            "distillation": meta.distillation or None, "quantization": meta.quantization or None,
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
