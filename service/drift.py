"""Drift: each text classifier's recent traffic against its package's reference profile (profile.json), per
model version, the whole server's.

On the request path (`prediction`, a data-plane observer) a prediction's texts only become bin numbers written
into this worker's ring of its last `window` texts (numpy, no distance, no I/O). In the background
(`refresh`, every DRIFT_REFRESH_S) each worker writes its rings' histograms to state_dir/drift/PID.json, reads
every live worker's (so every worker adds up the same counts: the same scores whichever answers), and scores each
signal with the population stability index against the reference (core/profile.py), into /metrics'
rnnserve_drift_score and the report GET /v1/models/NAME/drift answers. With several workers each keeps
`window / workers` texts, so the server's window is about `window` texts when traffic is spread evenly.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from bisect import bisect_right
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rnnserve.service.core import profile
from rnnserve.service.core.package import PackageError, Task
from rnnserve.service.metrics import Metrics
from rnnserve.service.processes import alive
from rnnserve.service.registry import Registry
from rnnserve.service.runtime.base import ModelRuntime
from rnnserve.service.settings import Settings

log = logging.getLogger("rnnserve.drift")
Key = tuple[str, str]  # (model, version)
TOKEN_EDGES, OOV_EDGES = np.array(profile.TOKEN_EDGES), np.array(profile.OOV_EDGES)
NO_PROFILE = ("the package has no drift profile (profile.json; packages written before drift have none): add one "
              "with `rnnserve-train profile PACKAGE --texts FILE` and reload")


class LiveWindow:
    """One model version's last `size` texts in this worker: each signal's bin of each text in a ring of int16
    (-1: none yet, or a text without words for oov_share)."""

    def __init__(self, sizes: dict[str, int], size: int):
        self.sizes = sizes
        self.rings = np.full((len(profile.SIGNALS), size), -1, dtype=np.int16)
        self.position = 0

    def add(self, stats: list, probabilities: np.ndarray) -> None:
        """Texts' TokenStats and their probabilities float [N, C]: their bins, written over the oldest. A single
        text (the usual request) is binned in plain Python: numpy's per-call overhead would be most of it."""
        size = self.rings.shape[1]
        stats, probabilities = stats[-size:], probabilities[-size:]
        n = len(stats)
        if n == 1:
            st, row = stats[0], probabilities[0].tolist()
            top = max(row)
            self.rings[:, self.position] = (*profile.text_bins(st.words, st.oov, st.truncated), row.index(top),
                                            bisect_right(profile.CONFIDENCE_EDGES, top))
            self.position = (self.position + 1) % size
            return
        words = np.fromiter((s.words for s in stats), dtype=np.int64, count=n)
        oov = np.fromiter((s.oov for s in stats), dtype=np.int64, count=n)
        truncated = np.fromiter((s.truncated for s in stats), dtype=bool, count=n)
        empty = words <= 0
        label, confidence = profile.prediction_bins(probabilities)
        bins = (np.searchsorted(TOKEN_EDGES, words, side="right"),
                np.where(empty, -1, np.searchsorted(OOV_EDGES, oov / np.maximum(words, 1), side="right")),
                np.where(empty, 2, truncated.astype(np.int64)), label, confidence)
        at = (self.position + np.arange(n)) % size
        self.rings[:, at] = np.stack(bins)
        self.position = int(at[-1] + 1) % size if n else self.position

    def counts(self) -> dict[str, list[int]]:
        """Each signal's histogram over the window."""
        return {signal: np.bincount(ring[ring >= 0], minlength=self.sizes[signal]).tolist()
                for signal, ring in zip(profile.SIGNALS, self.rings)}


@dataclass
class Reference:
    """A loaded version's reference profile, or why it has none (`reason`); `digest`: its package's."""

    digest: str
    labels: list[str]
    profile: profile.Profile | None = None
    reason: str = ""


class Drift:
    """This worker's drift: the rings it records into, and the report the background computes. directory: the
    workers' shared folder (settings.state_dir/drift), None for one process."""

    def __init__(self, settings: Settings, metrics: Metrics, registry: Registry, directory: Path | None):
        self.enabled = settings.drift
        self.size = settings.per_worker(settings.drift_window)
        self.window, self.min_count = settings.drift_window, settings.drift_min_count
        self.metrics, self.registry, self.directory = metrics, registry, directory
        self.windows: dict[Key, LiveWindow] = {}
        self.references: dict[Key, Reference] = {}
        self.reports: dict[Key, dict] = {}
        if directory is not None:
            directory.mkdir(parents=True, exist_ok=True)

    # -- the request path -----------------------------------------------------------------------------------

    def prediction(self, event: Any) -> None:
        """A data-plane observer (v2/dataplane.py's PredictionObserver): a text classifier's answered prediction
        into its version's ring."""
        model, result = event.model, event.result
        if event.error is not None or model is None or not hasattr(result, "token_stats"):
            return
        key = (model.name, str(model.version))
        window = self.windows.get(key)
        if window is None:
            if self.reference(model).profile is None:
                return
            window = self.windows[key] = LiveWindow(profile.sizes(len(model.labels)), self.size)
        window.add(result.token_stats, result.probabilities)

    def reference(self, model: ModelRuntime) -> Reference:
        """The version's reference profile, read once per package (a reload of other bytes reads it anew)."""
        key = (model.name, str(model.version))
        package = model.package
        ref = self.references.get(key)
        if ref is not None and ref.digest == package.digest:
            return ref
        ref = Reference(package.digest, list(model.labels))
        if package.task != Task.TEXT_CLASSIFICATION:
            ref.reason = f"drift is measured for text classifiers; this is a {package.task} model"
        elif profile.PROFILE not in package.manifest.files:
            ref.reason = NO_PROFILE
        else:
            try:
                ref.profile = profile.Profile.parse(package.read(profile.PROFILE), model.labels)
            except (PackageError, profile.ProfileError) as exc:
                ref.reason = f"the package's profile.json cannot be used: {exc}"
        self.references[key] = ref
        self.windows.pop(key, None)  # a new package's traffic starts a new window
        return ref

    # -- the background ---------------------------------------------------------------------------------------

    async def refresh_every(self, seconds: float) -> None:
        """refresh() every `seconds` until cancelled (the file I/O and scoring in a thread)."""
        if not self.enabled:
            return
        failing = False
        while True:
            await asyncio.sleep(seconds)
            counts = {key: window.counts() for key, window in list(self.windows.items())}
            models = [m for name in self.registry.names() for m in self.registry.versions(name).values()]
            try:
                await asyncio.to_thread(self.refresh, counts, models)
                failing = False
            except OSError as exc:  # said once while it lasts, not every round
                if not failing:
                    log.warning("drift cannot share its histograms: %s; the scores keep their last values", exc)
                failing = True
            except Exception:  # noqa: BLE001 - drift never stops serving; the next round tries again
                log.exception("drift refresh failed")

    def refresh(self, counts: dict[Key, dict[str, list[int]]], models: list[ModelRuntime]) -> None:
        """Share this worker's histograms, add up every worker's, and score each loaded version."""
        merged = self._merge(counts)
        reports = {}
        for model in models:
            key = (model.name, str(model.version))
            ref = self.reference(model)
            if ref.profile is None:
                continue
            report = reports[key] = self._score(ref, merged.get(key))
            for signal, entry in report["signals"].items():
                if entry["score"] is not None:
                    self.metrics.drift_score(*key, signal, entry["score"])
            self.metrics.drift_texts(*key, report["window"]["texts"])
        self.reports = reports

    def _merge(self, counts: dict[Key, dict[str, list[int]]]) -> dict[Key, dict[str, np.ndarray]]:
        if self.directory is None:
            files = [counts]
        else:
            mine = self.directory / f"{os.getpid()}.json"
            staged = mine.with_suffix(".tmp")
            try:
                staged.write_text(json.dumps([[name, version, c] for (name, version), c in counts.items()]))
                staged.replace(mine)  # whole or not at all for the readers
            except OSError:  # a full or read-only state directory: nothing half-written left behind
                with contextlib.suppress(OSError):
                    staged.unlink()
                raise
            files = []
            for path in self.directory.glob("*.json"):
                if not alive(int(path.stem)):  # a dead worker's window went with it
                    with contextlib.suppress(OSError):
                        path.unlink()
                    continue
                with contextlib.suppress(OSError, ValueError):
                    files.append({(n, v): c for n, v, c in json.loads(path.read_text())})
        merged: dict[Key, dict[str, np.ndarray]] = defaultdict(dict)
        for worker in files:
            for key, histograms in worker.items():
                for signal, values in histograms.items():
                    total = merged[key].get(signal)
                    merged[key][signal] = np.asarray(values) if total is None else total + values
        return merged

    def _score(self, ref: Reference, live: dict[str, np.ndarray] | None) -> dict:
        """The report of one version: each signal's histograms and PSI (None under min_count texts)."""
        assert ref.profile is not None
        texts = int(live["shape"].sum()) if live else 0
        signals = {}
        for signal in profile.SIGNALS:
            reference = ref.profile.counts[signal]
            counts = live[signal] if live else np.zeros_like(reference)
            given = counts.sum() >= self.min_count and reference.sum() > 0
            score = round(profile.psi(reference, counts), 4) if given else None
            signals[signal] = {"bins": profile.bins(signal, ref.labels), "reference": reference.tolist(),
                               "live": counts.tolist(), "score": score,
                               "alert": score is not None and score >= profile.ALERT}
        return {"available": True, "distance": "psi", "threshold": profile.ALERT,
                "window": {"size": self.window, "texts": texts, "min_count": self.min_count},
                "updated_at": time.time(), "reference": {"texts": ref.profile.texts, "source": ref.profile.source},
                "signals": signals, "alerts": [s for s, v in signals.items() if v["alert"]]}

    def report(self, model: ModelRuntime) -> dict:
        """GET /v1/models/NAME/drift: the latest scores of a loaded version, or why it has none."""
        head = {"model": model.name, "version": str(model.version)}
        if not self.enabled:
            return head | {"available": False, "reason": "drift is off on this server (RNNSERVE_DRIFT=false)"}
        ref = self.reference(model)
        if ref.profile is None:
            return head | {"available": False, "reason": ref.reason}
        report = self.reports.get((model.name, str(model.version)))
        if report is None:  # loaded since the last refresh
            report = self._score(ref, None) | {"updated_at": None}
        return head | report
