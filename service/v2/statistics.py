"""The statistics extension's `model_stats` (Triton's shapes; durations {count, ns}; last_inference in ms since
the epoch), from the whole server's figures (Metrics.statistics)."""

from __future__ import annotations

from rnnserve.service.metrics import COMPUTE, VersionStatistics
from rnnserve.service.registry import Registry
from rnnserve.service.runtime.base import ModelRuntime


def model_stats(registry: Registry, statistics: dict[tuple[str, str], VersionStatistics], name: str | None = None,
                version: str | None = None) -> list[dict]:
    """Every loaded version of every model, of one model, or one version. success/fail count predict requests
    (/v1 predict, V2 infer over HTTP and gRPC, scoring's chunks); queue and compute_* count the requests the
    batcher ran, an explanation's and a generation's runs included; a request over max_batch_size inputs is
    several. NotFound (404) or NotReady (503) for a model or version that is not loaded."""
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
