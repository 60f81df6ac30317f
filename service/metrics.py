"""Prometheus collectors, owned by one app (its own CollectorRegistry), so apps and tests never collide.

With several worker processes (PROMETHEUS_MULTIPROC_DIR set by the server's entry point) every worker writes
its values to that directory and a scrape, whichever worker takes it, adds them up with prometheus_client's
MultiProcessCollector: the same totals from every worker, kept when a worker dies (its counters stay; its
gauges go, being `live`).

The V2 statistics extension's figures (per model *and version*, per batch size) are kept the same way, so they
too are the whole server's, but in collectors of their own that /metrics leaves out: Prometheus has the
histograms by model, and batch-size labels would multiply its series."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess

from rnnserve.service.processes import alive

log = logging.getLogger("rnnserve.metrics")
# prometheus_client grows a worker's value file by doubling it and writes it through mmap: where the file system
# has no room for the new pages, the write kills the process (SIGBUS). Below this much free space values stop
# being recorded instead, and readiness says why, until there is room again.
MIN_FREE_BYTES = 4 << 20
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
STATISTICS = ("rnnserve_statistics", "rnnserve_statistics_seconds", "rnnserve_last_inference_timestamp_seconds")
COMPUTE = ("compute_input", "compute_infer", "compute_output")


@dataclass
class VersionStatistics:
    """One model version's figures for the statistics extension, summed over worker processes. counts and
    seconds are keyed by (stat, batch size): batch size 0 for the whole (stats "inference": inputs run,
    "execution": batches, "success"/"fail": predict requests, "queue": requests through the batcher, also the
    count of each compute_* stat), a batch size for one size's "execution" count and compute_* seconds."""

    counts: dict[tuple[str, int], float] = field(default_factory=lambda: defaultdict(float))
    seconds: dict[tuple[str, int], float] = field(default_factory=lambda: defaultdict(float))
    last_inference: float = 0.0  # Unix time of the last batch's end, 0: none yet


class Metrics:
    """directory: prometheus_client's multiprocess directory (several workers), None for one process."""

    def __init__(self, directory: str | None = None) -> None:
        self.directory = directory
        self.problem: str | None = None  # why values are not being recorded (readiness says it)
        self.check_storage()
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("rnnserve_requests_total", "HTTP requests", ["model", "endpoint", "status"],
                                registry=r)
        self.errors = Counter("rnnserve_request_errors_total", "HTTP requests answered with status >= 400",
                              ["model", "endpoint", "status"], registry=r)
        self.latency = Histogram("rnnserve_request_latency_seconds", "HTTP request latency", ["model", "endpoint"],
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("rnnserve_batch_size", "Texts per onnxruntime run", ["model"],
                                    buckets=BATCH_BUCKETS, registry=r)
        self.queue_wait = Histogram("rnnserve_queue_wait_seconds", "Time a request waited for its batch", ["model"],
                                    buckets=LATENCY_BUCKETS, registry=r)
        self.inference = Histogram("rnnserve_inference_seconds", "onnxruntime run time per batch", ["model"],
                                   buckets=LATENCY_BUCKETS, registry=r)
        self.texts = Counter("rnnserve_texts_total", "Inputs run by a model (texts, sequences, explanation "
                             "variants, generation steps)", ["model"], registry=r)
        self.payload_events = Counter("rnnserve_payload_events_total", "Payload log events by outcome: sent "
                                      "(written or POSTed), dropped (the worker's queue was full), failed (the sink "
                                      "refused or was unreachable)", ["outcome"], registry=r)
        # Several workers: a version counts as loaded when every live worker has it, failed when any has failed.
        self.models_loaded = Gauge("rnnserve_models_loaded", "Model versions loaded and ready", registry=r,
                                   multiprocess_mode="livemin")
        self.models_failed = Gauge("rnnserve_models_failed", "Model packages that failed to load", registry=r,
                                   multiprocess_mode="livemax")
        # Every worker scores the same merged counts (service/drift.py): the live workers' largest is the value.
        self.drift = Gauge("rnnserve_drift_score", "Population stability index of a drift signal's recent window "
                           "against the package's reference profile (alert at 0.25)", ["model", "version", "signal"],
                           registry=r, multiprocess_mode="livemax")
        self.drift_window = Gauge("rnnserve_drift_window_texts", "Texts in the drift window, the whole server's",
                                  ["model", "version"], registry=r, multiprocess_mode="livemax")
        self.statistics_registry = s = CollectorRegistry()  # out of /metrics (module docstring)
        labels = ["model", "version", "stat", "batch_size"]
        self.stat_counts = Counter(STATISTICS[0], "Statistics extension counts", labels, registry=s)
        self.stat_seconds = Counter(STATISTICS[1], "Statistics extension durations", labels, registry=s)
        self.last_inference = Gauge(STATISTICS[2], "When a batch last ended", ["model", "version"], registry=s,
                                    multiprocess_mode="max")
        self._request_children: dict[tuple[str, str, int], tuple] = {}
        self._observers: dict[tuple[str, str], ModelObserver] = {}  # the latest for each model version

    def check_storage(self) -> None:
        """Record values only while the multiprocess directory has room for them (MIN_FREE_BYTES) and takes
        writes; else stop and say why (logged once, readiness), until it has room again."""
        if not self.directory:
            return
        try:
            st = os.statvfs(self.directory)
            free = st.f_bavail * st.f_frsize
            problem = ("metrics are not recorded: their directory is read-only" if st.f_flag & os.ST_RDONLY else
                       f"metrics are not recorded: their directory has {free} bytes free (at least {MIN_FREE_BYTES} "
                       "needed)" if free < MIN_FREE_BYTES else None)
        except OSError as exc:
            problem = f"metrics are not recorded: their directory is not usable ({exc.strerror})"
        if problem != self.problem:
            (log.error if problem else log.info)(problem or "metrics are recorded again")
        self.problem = problem

    def set_models(self, loaded: int, failed: int) -> None:
        """The gauges of model versions loaded and failed."""
        if self.problem is None:
            self.models_loaded.set(loaded)
            self.models_failed.set(failed)

    def drift_score(self, model: str, version: str, signal: str, score: float) -> None:
        if self.problem is None:
            self.drift.labels(model, version, signal).set(score)

    def drift_texts(self, model: str, version: str, texts: int) -> None:
        if self.problem is None:
            self.drift_window.labels(model, version).set(texts)

    def exposition(self) -> bytes:
        """The text a scrape gets: this app's collectors, or every worker's when there are several."""
        directory = self.directory
        if not directory:
            return generate_latest(self.registry)
        for path in Path(directory).glob("gauge_live*_*.db"):  # gauges of workers that died go with them
            found = re.search(r"_(\d+)\.db$", path.name)
            if found and not alive(pid := int(found.group(1))):
                multiprocess.mark_process_dead(pid, directory)
        registry = CollectorRegistry()
        registry.register(_Without(multiprocess.MultiProcessCollector(None, directory), STATISTICS))
        return generate_latest(registry)

    async def read_statistics(self) -> dict[tuple[str, str], VersionStatistics]:
        """statistics(), after this worker's pending figures are written (on the event loop, where the
        observers record; the files are read in a thread)."""
        self.flush()
        return await asyncio.to_thread(self.statistics)

    def statistics(self) -> dict[tuple[str, str], VersionStatistics]:
        """(model, version) -> its statistics, the whole server's as written (every worker's files when there
        are several, the dead ones' too: counters are kept, as in /metrics)."""
        directory = self.directory
        families = (self.statistics_registry.collect() if not directory else
                    (f for f in multiprocess.MultiProcessCollector(None, directory).collect() if f.name in STATISTICS))
        out: dict[tuple[str, str], VersionStatistics] = defaultdict(VersionStatistics)
        for family in families:
            for sample in family.samples:
                if sample.name.endswith("_created"):
                    continue
                labels = sample.labels
                stats = out[labels["model"], labels["version"]]
                if family.name == STATISTICS[2]:
                    stats.last_inference = max(stats.last_inference, sample.value)
                else:
                    table = stats.counts if family.name == STATISTICS[0] else stats.seconds
                    table[labels["stat"], int(labels["batch_size"])] += sample.value
        return out

    def request_done(self, model: str, endpoint: str, status: int, seconds: float) -> None:
        """Count one HTTP request. The labelled children are looked up once per (model, endpoint, status), a
        bounded set, instead of on every request."""
        if self.problem is not None:
            return
        key = (model, endpoint, status)
        children = self._request_children.get(key)
        if children is None:
            code = str(status)
            children = self._request_children[key] = (
                self.requests.labels(model, endpoint, code),
                self.errors.labels(model, endpoint, code) if status >= 400 else None,
                self.latency.labels(model, endpoint))
        requests, errors, latency = children
        requests.inc()
        if errors is not None:
            errors.inc()
        latency.observe(seconds)

    def model_observer(self, model: str, version: str) -> ModelObserver:
        observer = self._observers[model, version] = ModelObserver(self, model, version)
        return observer

    def flush(self) -> None:
        """Write every model observer's pending statistics to the collectors."""
        for observer in list(self._observers.values()):
            observer.flush()

    async def flush_every(self, seconds: float) -> None:
        """flush() every `seconds` until cancelled, then once more: what another worker's statistics show is
        at most this old."""
        try:
            while True:
                await asyncio.sleep(seconds)
                self.check_storage()
                self.flush()
        finally:
            self.flush()


class ModelObserver:
    """Records what one model version's runtime reports (a RuntimeObserver): /metrics' histograms by model
    at once, the statistics extension's figures by model and version in this process first, written to the
    collectors by `flush` (Metrics.flush_every). With several workers every collector update is a write to a
    shared file (prometheus_client's multiprocess values, each with its own pid check), and the extension's
    dozen figures a batch, written at once, cost 20% of a 2-worker server's requests per second at c=1."""

    def __init__(self, metrics: Metrics, model: str, version: str):
        self._size, self._wait, self._infer = (
            m.labels(model=model) for m in (metrics.batch_size, metrics.queue_wait, metrics.inference))
        self._texts = metrics.texts.labels(model=model)
        self._metrics, self._labels = metrics, (model, str(version))
        self._counts: dict[tuple[str, int], float] = defaultdict(float)  # as VersionStatistics, not yet written
        self._seconds: dict[tuple[str, int], float] = defaultdict(float)
        self._last = 0.0
        self._children: dict[tuple, Counter] = {}

    def batch(self, rows: int, waits: list[float], times) -> None:
        """times: the runtime's BatchTimes (this layer is below the runtimes')."""
        if self._metrics.problem is not None:
            return
        self._texts.inc(rows)
        self._size.observe(rows)
        self._infer.observe(times.compute_infer)
        for w in waits:
            self._wait.observe(w)
        requests = len(waits)  # Triton counts each request in a batch with the batch's compute times
        counts, seconds = self._counts, self._seconds
        counts["inference", 0] += rows
        counts["execution", 0] += 1
        counts["execution", rows] += 1
        counts["queue", 0] += requests
        seconds["queue", 0] += sum(waits)
        for stat, value in zip(COMPUTE, (times.compute_input, times.compute_infer, times.compute_output)):
            seconds[stat, 0] += value * requests
            seconds[stat, rows] += value
        self._last = time.time()

    def request(self, ok: bool, seconds: float) -> None:
        stat = "success" if ok else "fail"
        self._counts[stat, 0] += 1
        self._seconds[stat, 0] += seconds

    def flush(self) -> None:
        """Write what was recorded since the last flush to the collectors."""
        if (not self._counts and not self._seconds) or self._metrics.problem is not None:
            return
        pending = ((self._metrics.stat_counts, self._counts), (self._metrics.stat_seconds, self._seconds))
        self._counts, self._seconds = defaultdict(float), defaultdict(float)
        for counter, values in pending:
            for (stat, size), value in values.items():
                child = self._children.get((counter, stat, size))
                if child is None:
                    child = self._children[counter, stat, size] = counter.labels(*self._labels, stat, str(size))
                child.inc(value)
        self._metrics.last_inference.labels(*self._labels).set(self._last)


class _Without:
    """A collector's metric families but the named ones."""

    def __init__(self, collector, names: tuple[str, ...]):
        self.collector, self.names = collector, names

    def collect(self):
        return [family for family in self.collector.collect() if family.name not in self.names]

