"""Payload logging: a sample of the data plane's predictions, and every failure, as CloudEvents 1.0 that a
consumer of KServe's inference logger reads unchanged.

PayloadLogger is a PredictionObserver (service/v2/dataplane.py), so /v1, V2 over HTTP and gRPC, and file scoring
all feed it. On the event loop it only draws the sample and puts the prediction on a bounded queue (full: the
event is dropped and counted); a sender thread of its own builds the events and hands them to the sink
(sinks.py), so a slow or absent sink never delays or fails an answer. Outcomes are counted in /metrics as
rnnserve_payload_events_total{outcome="sent"|"dropped"|"failed"}.

Events (`data` is JSON, the V2 inference protocol's shapes):
- REQUEST, `org.kubeflow.serving.inference.request`: {"id", "model_name", "model_version", "inputs": [tensor]};
- RESPONSE, `org.kubeflow.serving.inference.response`: {"id", "model_name", "model_version", "outputs":
  [probabilities FP32 [N, C], and for classifiers the top label BYTES [N]]};
- FAILURE, `io.rnnserve.inference.failure` (ours: KServe has none): {"id", "model_name", "model_version",
  "status", "code", "message", "inputs"}, for every failed request whether sampled or not, instead of its
  request event (a request refused before it was decoded has no inputs: shape [0]).
The event id is the request id (X-Request-ID, gRPC's x-request-id, or the server's), the same for a request's
events; file scoring logs each block's sampled rows under REQUEST_ID-N. Extensions: inferenceservicename (the
model), endpoint ("v1", "v2", "score"), traceparent (the request's span, when it is traced).
Texts appear whole, as the sha256 of their UTF-8 bytes, or not at all (RNNSERVE_PAYLOAD_LOG_TEXT).
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import queue
import random
import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np
from cloudevents.http import CloudEvent

from rnnserve.service.core.errors import ServiceError
from rnnserve.service.metrics import Metrics
from rnnserve.service.observe.sinks import Sink, open_sink
from rnnserve.service.observe.tracing import traceparent
from rnnserve.service.settings import Settings
from rnnserve.service.v2.dataplane import Prediction

REQUEST = "org.kubeflow.serving.inference.request"
RESPONSE = "org.kubeflow.serving.inference.response"
FAILURE = "io.rnnserve.inference.failure"
SEND_AT_ONCE = 256  # events handed to the sink in one call (one write and lock for the file sink)
log = logging.getLogger("rnnserve.payload")


class PayloadLogger:
    """A PredictionObserver that logs a sample of predictions and every failure (module docstring). `start` the
    sender thread before serving and `close` it after."""

    def __init__(self, settings: Settings, metrics: Metrics, sink: Sink | None = None):
        self.rate, self.rates = settings.payload_log_rate, settings.payload_rates()
        mode = settings.payload_log_mode
        self.requests, self.responses = mode in ("all", "request"), mode in ("all", "response")
        self.text = settings.payload_log_text
        self.source = f"http://{settings.host}:{settings.port}/"
        self._sink = sink or open_sink(settings.payload_log_sink, settings.payload_log_max_bytes,
                                       settings.payload_log_backups, settings.payload_log_timeout_s)
        self._queue: queue.Queue[tuple | None] = queue.Queue(settings.payload_log_queue)
        self._sent, self._dropped, self._failed = (metrics.payload_events.labels(outcome)
                                                   for outcome in ("sent", "dropped", "failed"))
        self._blocks = itertools.count(1)  # file scoring's blocks, numbered in their event ids
        self._thread = threading.Thread(target=self._send_all, name="payload-log", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self, timeout_s: float = 5.0) -> None:
        """Send what is queued (for up to timeout_s), then stop the thread and close the sink."""
        if self._thread.is_alive():
            try:
                self._queue.put(None, timeout=timeout_s)
            except queue.Full:
                log.warning("payload events left unsent at shutdown", extra={"queued": self._queue.qsize()})
                return
            self._thread.join(timeout_s)
        if not self._thread.is_alive():
            self._sink.close()

    # -- on the event loop: draw, queue -------------------------------------------------------------------------

    def prediction(self, event: Prediction) -> None:
        rate = self.rates.get(event.name, self.rate)
        rows: list[int] | None = None  # file scoring: the block's sampled rows
        if event.endpoint == "score":
            rows = [i for i in range(len(event.rows)) if random.random() < rate]
            sampled = bool(rows)
        else:
            sampled = rate > 0 and random.random() < rate
        if not sampled and event.error is None:
            return
        block = f"-{next(self._blocks)}" if rows is not None else ""
        try:
            self._queue.put_nowait((event, rows, block, traceparent(), time.time()))
        except queue.Full:
            self._dropped.inc()

    # -- the sender thread: build, send, count -------------------------------------------------------------------

    def _send_all(self) -> None:
        while True:
            item = self._queue.get()
            items = [item]
            while item is not None and len(items) < SEND_AT_ONCE:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                items.append(item)
            events = [e for it in items if it is not None for e in self._events(*it)]
            if events:
                failed = self._sink.send(events)
                self._sent.inc(len(events) - failed)
                if failed:
                    self._failed.inc(failed)
            if items[-1] is None:
                return

    def _events(self, event: Prediction, rows: list[int] | None, block: str, parent: str | None,
                when: float) -> list[CloudEvent]:
        model = event.model
        head: dict[str, Any] = {"id": event.request_id + block, "model_name": event.name,
                                "model_version": str(model.version) if model is not None else None}
        inputs = event.rows if rows is None else [event.rows[i] for i in rows]
        attributes = {"source": self.source, "id": head["id"], "time": datetime.fromtimestamp(when, UTC).isoformat(),
                      "datacontenttype": "application/json", "inferenceservicename": event.name,
                      "endpoint": event.endpoint}
        if parent:
            attributes["traceparent"] = parent
        if event.error is not None:  # its inputs are in it: no request event besides
            error = event.error if isinstance(event.error, ServiceError) else ServiceError("internal server error")
            return [CloudEvent({**attributes, "type": FAILURE}, {
                **head, "status": error.status, "code": error.code, "message": error.message,
                "inputs": [self._tensor(inputs)]})]
        out = []
        if self.requests:
            out.append(CloudEvent({**attributes, "type": REQUEST}, {**head, "inputs": [self._tensor(inputs)]}))
        if self.responses and model is not None and (outputs := _outputs(event.result, model.labels, rows)):
            out.append(CloudEvent({**attributes, "type": RESPONSE}, {**head, "outputs": outputs}))
        return out

    def _tensor(self, rows: Sequence | np.ndarray) -> dict:
        """The rows as a V2 tensor: texts (BYTES [N]) or numeric inputs (FP32 [N, ...]), with their data as the
        text setting says (whole, sha256 hex digests, or none)."""
        texts = all(isinstance(r, str) for r in rows)
        shape = [len(rows)] if texts else list(np.shape(rows))
        tensor: dict[str, Any] = {"name": "text" if texts else "input", "datatype": "BYTES" if texts else "FP32",
                                  "shape": shape}
        if self.text == "whole":
            tensor["data"] = list(rows) if texts else np.asarray(rows, np.float32).ravel().tolist()
        elif self.text == "sha256":
            tensor.update(datatype="BYTES", shape=[len(rows)], parameters={"content": "sha256"},
                          data=[hashlib.sha256(r.encode() if texts else np.ascontiguousarray(r).tobytes()).hexdigest()
                                for r in rows])
        return tensor


def _outputs(result: Any, labels: list[str], rows: list[int] | None) -> list[dict]:
    """A result's probabilities (or values) as V2 tensors, and for classifiers the top label of each row."""
    values = getattr(result, "probabilities", result)
    if isinstance(values, tuple):  # a sequence's step: (its output, the state after it)
        values = values[0]
    if not isinstance(values, np.ndarray):
        return []
    if rows is not None:
        values = values[rows]
    outputs = [{"name": "probabilities" if labels else "output", "datatype": "FP32", "shape": list(values.shape),
                "data": values.astype(np.float32).ravel().tolist()}]
    if labels and values.ndim == 2 and values.shape[1] == len(labels):
        outputs.append({"name": "label", "datatype": "BYTES", "shape": [len(values)],
                        "data": [labels[i] for i in values.argmax(1)]})
    return outputs
