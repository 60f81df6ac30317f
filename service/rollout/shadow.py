"""Shadow traffic: a share of predictions also run on a shadow version after their answer is on its way, and
the two versions' answers compared.

The shadow never touches the primary answer: it starts from the primary's rows and result once predict has
them, in a task of its own, and its errors are counted, never raised. It yields to primary work: a run is
shed (and counted) while the primary version's batcher has more than `shadow_max_queue` requests waiting (when
offered, and again as it starts), or the worker already holds `shadow_max_pending` shadow runs.

Each compared input records, by model and (primary, shadow) version: whether the top labels agree (by name),
|Δp| (the largest absolute difference of a class probability, in [0, 1]; versions with other classes are
not compared) and, per request, both versions' seconds. They
are Prometheus collectors on the app's registry, so with several workers every worker writes them to the shared
multiprocess directory and /metrics and `summary` give the whole server's figures.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np
from prometheus_client import Counter, Histogram, multiprocess

from rnnserve.service.core.errors import ServiceError
from rnnserve.service.metrics import LATENCY_BUCKETS, Metrics
from rnnserve.service.registry import Registry
from rnnserve.service.rollout.plan import Rollout
from rnnserve.service.runtime.base import ModelRuntime

log = logging.getLogger("rnnserve.rollout")
DELTA_BUCKETS = (0.001, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0)
PREFIX = "rnnserve_shadow_"


class Comparisons:
    """The comparison's collectors (module docstring), registered on the app's metrics registry."""

    def __init__(self, metrics: Metrics):
        self.metrics, r = metrics, metrics.registry
        pair = ["model", "primary", "shadow"]
        self.pairs = Counter(f"{PREFIX}pairs_total", "Inputs answered by the primary and run on the shadow version",
                             pair, registry=r)
        self.agreed = Counter(f"{PREFIX}agreements_total", "Compared inputs whose top labels agree", pair, registry=r)
        self.delta = Histogram(f"{PREFIX}delta_p", "|Δp| per compared input: the largest absolute difference of a "
                               "class probability between primary and shadow", pair, buckets=DELTA_BUCKETS,
                               registry=r)
        self.seconds = Histogram(f"{PREFIX}latency_seconds", "Seconds of a compared request's prediction, by role "
                                 "(primary, shadow)", ["model", "role"], buckets=LATENCY_BUCKETS, registry=r)
        self.errors = Counter(f"{PREFIX}errors_total", "Shadow runs that failed", ["model", "shadow"], registry=r)
        self.shed = Counter(f"{PREFIX}shed_total", "Shadow runs not made: primary work was waiting or the worker "
                            "held shadow_max_pending runs", ["model"], registry=r)

    def record(self, name: str, primary: ModelRuntime, shadow: ModelRuntime, first: Any, second: Any,
               seconds: tuple[float, float]) -> None:
        """One request's pair of answers. Models without classes (regression) count their latencies only."""
        self.seconds.labels(name, "primary").observe(seconds[0])
        self.seconds.labels(name, "shadow").observe(seconds[1])
        p, q = _probabilities(first), _probabilities(second)
        if not primary.labels or p is None or q is None or sorted(primary.labels) != sorted(shadow.labels):
            return
        if shadow.labels != primary.labels:  # the same classes in another order: compared by name
            q = q[:, [shadow.labels.index(label) for label in primary.labels]]
        labels = (name, str(primary.version), str(shadow.version))
        delta = np.abs(p - q).max(axis=1)
        self.pairs.labels(*labels).inc(len(p))
        self.agreed.labels(*labels).inc(int((p.argmax(axis=1) == q.argmax(axis=1)).sum()))
        histogram = self.delta.labels(*labels)
        for value in delta.tolist():
            histogram.observe(value)

    def summary(self, name: str) -> dict:
        """The model's comparison, the whole server's: pairs by (primary, shadow) with their agreement and |Δp|
        histogram (cumulative counts by upper bound), mean seconds by role, shadow errors and sheds. Blocking
        (it reads the workers' files): run it in a thread."""
        directory = self.metrics.directory
        families = (multiprocess.MultiProcessCollector(None, directory).collect() if directory else
                    self.metrics.registry.collect())
        pairs: dict[tuple[str, str], dict] = defaultdict(lambda: {"pairs": 0, "agreed": 0, "delta_p": {}})
        seconds: dict[str, dict[str, float]] = defaultdict(lambda: {"count": 0, "sum": 0.0})
        errors = shed = 0.0
        for family in families:
            if not family.name.startswith(PREFIX):
                continue
            for sample in family.samples:
                labels = sample.labels
                if labels.get("model") != name or sample.name.endswith("_created"):
                    continue
                key = (labels.get("primary", ""), labels.get("shadow", ""))
                if sample.name == f"{PREFIX}pairs_total":
                    pairs[key]["pairs"] += int(sample.value)
                elif sample.name == f"{PREFIX}agreements_total":
                    pairs[key]["agreed"] += int(sample.value)
                elif sample.name == f"{PREFIX}delta_p_bucket":
                    bounds = pairs[key]["delta_p"]
                    bounds[labels["le"]] = bounds.get(labels["le"], 0) + int(sample.value)
                elif sample.name.startswith(f"{PREFIX}latency_seconds_") and sample.name[-4:] in ("_sum", "ount"):
                    seconds[labels["role"]]["sum" if sample.name.endswith("_sum") else "count"] += sample.value
                elif sample.name == f"{PREFIX}errors_total":
                    errors += sample.value
                elif sample.name == f"{PREFIX}shed_total":
                    shed += sample.value
        compared = [{"primary": k[0], "shadow": k[1], "pairs": v["pairs"], "agreed": v["agreed"],
                     "agreement": v["agreed"] / v["pairs"] if v["pairs"] else None,
                     "delta_p": [{"le": le, "count": n} for le, n in sorted(v["delta_p"].items(),
                                                                            key=lambda item: float(item[0]))]}
                    for k, v in sorted(pairs.items())]
        latency = {role: {"requests": int(v["count"]), "mean_s": v["sum"] / v["count"] if v["count"] else None}
                   for role, v in sorted(seconds.items())}
        return {"compared": compared, "latency": latency, "shadow_errors": int(errors), "shed": int(shed)}


class Shadow:
    """One worker's shadow runs: `offer` each answered prediction; a share of them run on the shadow version
    in the background. `close` cancels what is still running."""

    def __init__(self, registry: Registry, comparisons: Comparisons, max_pending: int, max_queue: int):
        self.registry, self.comparisons = registry, comparisons
        self.max_pending, self.max_queue = max_pending, max_queue
        self.tasks: set[asyncio.Task] = set()

    def offer(self, name: str, rollout: Rollout, primary: ModelRuntime, rows: Sequence | np.ndarray, result: Any,
              seconds: float) -> None:
        """Maybe run rows on the rollout's shadow version (its share, when the shadow is loaded, is not the version
        that answered, and primary work leaves room; else shed and counted). Never raises, never waits."""
        assert rollout.shadow is not None  # a shadow_share needs one (Rollout's check)
        if random.random() >= rollout.shadow_share:
            return
        version = rollout.labels.get(rollout.shadow) if not rollout.shadow.isdigit() else int(rollout.shadow)
        loaded = self.registry.models.get(name, {})
        if version is None or version not in loaded or version == primary.version:
            return  # a shadow that is not ready receives nothing
        if len(self.tasks) >= self.max_pending or primary.batcher.queued > self.max_queue:
            self.comparisons.shed.labels(name).inc()
            return
        task = asyncio.get_running_loop().create_task(self._run(name, version, primary, rows, result, seconds))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _run(self, name: str, version: int, primary: ModelRuntime, rows: Sequence | np.ndarray, result: Any,
                   seconds: float) -> None:
        await asyncio.sleep(0)  # the primary's answer goes out first
        if primary.batcher.queued > self.max_queue:  # primary work arrived meanwhile: it goes first
            self.comparisons.shed.labels(name).inc()
            return
        started = time.perf_counter()
        try:
            shadow: ModelRuntime
            shadow, out = await self.registry.call(name, version, lambda m: m.predict(rows))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - a shadow's failure is counted, never the primary's
            self.comparisons.errors.labels(name, str(version)).inc()
            if not isinstance(exc, ServiceError):
                log.exception("shadow run failed", extra={"model": name, "version": version})
            return
        try:
            self.comparisons.record(name, primary, shadow, result, out, (seconds, time.perf_counter() - started))
        except Exception:  # noqa: BLE001 - the same: a comparison that cannot be made is logged
            log.exception("shadow comparison failed", extra={"model": name, "version": version})

    async def close(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


def _probabilities(result: Any) -> np.ndarray | None:
    """Class probabilities [N, C] of a result (a text classifier's ClassificationResult or a sequence
    classifier's array), None for other results."""
    p = getattr(result, "probabilities", result)
    return p if isinstance(p, np.ndarray) and p.ndim == 2 and p.dtype.kind == "f" else None
