"""Prometheus collectors, owned by one app (its own CollectorRegistry), so apps and tests never collide.

With several worker processes (PROMETHEUS_MULTIPROC_DIR set by the server's entry point) every worker writes
its values to that directory and a scrape, whichever worker takes it, adds them up with prometheus_client's
MultiProcessCollector: the same totals from every worker, kept when a worker dies (its counters stay; its
gauges go, being `live`)."""

from __future__ import annotations

import os
import re
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess

from rnnserve.service.processes import alive

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class Metrics:
    def __init__(self) -> None:
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
        # Several workers: a version counts as loaded when every live worker has it, failed when any has failed.
        self.models_loaded = Gauge("rnnserve_models_loaded", "Model versions loaded and ready", registry=r,
                                   multiprocess_mode="livemin")
        self.models_failed = Gauge("rnnserve_models_failed", "Model packages that failed to load", registry=r,
                                   multiprocess_mode="livemax")
        self._request_children: dict[tuple[str, str, int], tuple] = {}

    def exposition(self) -> bytes:
        """The text a scrape gets: this app's collectors, or every worker's when there are several."""
        directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        if not directory:
            return generate_latest(self.registry)
        for path in Path(directory).glob("gauge_live*_*.db"):  # gauges of workers that died go with them
            pid = int(re.search(r"_(\d+)\.db$", path.name).group(1))
            if not alive(pid):
                multiprocess.mark_process_dead(pid, directory)
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, directory)
        return generate_latest(registry)

    def request_done(self, model: str, endpoint: str, status: int, seconds: float) -> None:
        """Count one HTTP request. The labelled children are looked up once per (model, endpoint, status), a
        bounded set, instead of on every request."""
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

    def batch_observer(self, model: str):
        size, wait, run, texts = (m.labels(model=model) for m in (self.batch_size, self.queue_wait, self.inference,
                                                                  self.texts))

        def observe(rows: int, waits: list[float], seconds: float) -> None:
            texts.inc(rows)
            size.observe(rows)
            run.observe(seconds)
            for w in waits:
                wait.observe(w)

        return observe

