"""Drift's signals, their fixed bins and the distance between two histograms: one definition for the reference
profile a package carries (profile.json, written by training) and the live histograms the server keeps
(service/drift.py), so both count the same things in the same bins.

Signals (each a histogram of counts):
- per text: `tokens` (the words the tokenizer found, before truncation), `oov_share` (OOV or dropped words per
  word; texts without words are left out of it), `shape` (kept whole, truncated, empty);
- per prediction: `label` (the predicted class) and `confidence` (the top probability).

The distance is the population stability index, PSI = sum((q - p) * ln(q / p)) over bins of the reference's
shares p and the live shares q, each floored at EPSILON so a bin empty on one side stays finite. ALERT (0.25) is
the conventional "significant shift"; docs/drift.md says why PSI and what to do at it.
"""

from __future__ import annotations

import json
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

PROFILE = "profile.json"
PROFILE_FORMAT = "rnnserve-profile/1"
# Upper-open bin edges: a value v falls in bin bisect_right(EDGES, v); len(EDGES) + 1 bins.
TOKEN_EDGES = (1, 5, 10, 20, 50, 100, 200, 400, 800, 1600)  # words; bin 0: no words
OOV_EDGES = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5)  # share of a text's words
CONFIDENCE_EDGES = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)  # top probability
_CONFIDENCE = np.array(CONFIDENCE_EDGES)
SHAPES = ("whole", "truncated", "empty")
TEXT_SIGNALS = ("tokens", "oov_share", "shape")
PREDICTION_SIGNALS = ("label", "confidence")
SIGNALS = TEXT_SIGNALS + PREDICTION_SIGNALS
EPSILON = 1e-4  # the floor of a bin's share in PSI
ALERT = 0.25  # PSI at or above this: alert (docs/drift.md)
MAX_PROFILE_BYTES = 1 << 20


class ProfileError(ValueError):
    """A profile.json that this code cannot compare against (wrong format, other bins, bad counts)."""


def bins(signal: str, labels: Sequence[str]) -> list:
    """The bins of a signal as shown: edges' intervals as "[a, b)" strings, or the categories."""
    if signal == "shape":
        return list(SHAPES)
    if signal == "label":
        return list(labels)
    edges = {"tokens": TOKEN_EDGES, "oov_share": OOV_EDGES, "confidence": CONFIDENCE_EDGES}[signal]
    bounds = [0, *edges, None]
    return [f"[{a}, {b})" if b is not None else f">= {a}" for a, b in zip(bounds, bounds[1:])]


def sizes(classes: int) -> dict[str, int]:
    """Each signal's bin count, for a model of this many classes."""
    return {"tokens": len(TOKEN_EDGES) + 1, "oov_share": len(OOV_EDGES) + 1, "shape": len(SHAPES),
            "label": classes, "confidence": len(CONFIDENCE_EDGES) + 1}


def text_bins(words: int, oov: int, truncated: bool) -> tuple[int, int, int]:
    """One text's bins (tokens, oov_share, shape); oov_share -1 for a text without words (not counted)."""
    if words <= 0:
        return 0, -1, 2
    return bisect_right(TOKEN_EDGES, words), bisect_right(OOV_EDGES, oov / words), 1 if truncated else 0


def prediction_bins(probabilities: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """probabilities float [N, C] -> (label bins int [N], confidence bins int [N])."""
    return probabilities.argmax(axis=1), np.searchsorted(_CONFIDENCE, probabilities.max(axis=1), side="right")


def counts_of(stats: Sequence, probabilities: np.ndarray) -> dict[str, np.ndarray]:
    """Histograms (int64 counts per signal) of texts' TokenStats (words, oov, truncated) and their predicted
    probabilities float [N, C]."""
    out = {s: np.zeros(n, dtype=np.int64) for s, n in sizes(probabilities.shape[1]).items()}
    for st in stats:
        tokens, oov, shape = text_bins(st.words, st.oov, st.truncated)
        out["tokens"][tokens] += 1
        out["shape"][shape] += 1
        if oov >= 0:
            out["oov_share"][oov] += 1
    if len(probabilities):
        label, confidence = prediction_bins(probabilities)
        out["label"] += np.bincount(label, minlength=len(out["label"]))
        out["confidence"] += np.bincount(confidence, minlength=len(out["confidence"]))
    return out


def psi(reference: np.ndarray, live: np.ndarray) -> float:
    """The population stability index of two histograms (counts over the same bins; neither empty)."""
    p = np.maximum(reference / reference.sum(), EPSILON)
    q = np.maximum(live / live.sum(), EPSILON)
    return float(np.sum((q - p) * np.log(q / p)))


@dataclass
class Profile:
    """A package's reference histograms (profile.json): `counts` per signal, how many texts, where they came
    from (`source`, a sentence)."""

    texts: int
    source: str
    counts: dict[str, np.ndarray]

    def to_json(self, labels: Sequence[str]) -> str:
        return json.dumps({"format": PROFILE_FORMAT, "texts": self.texts, "source": self.source, "signals": {
            s: {"bins": bins(s, labels), "counts": self.counts[s].tolist()} for s in SIGNALS}}, indent=1)

    @classmethod
    def parse(cls, data: bytes, labels: Sequence[str]) -> Profile:
        """profile.json's bytes -> Profile, or ProfileError (its bins must be this code's for these labels)."""
        try:
            doc = json.loads(data)
            if doc.get("format") != PROFILE_FORMAT:
                raise ProfileError(f"profile format {doc.get('format')!r}, expected {PROFILE_FORMAT!r}")
            counts = {}
            for signal in SIGNALS:
                entry = doc["signals"][signal]
                if entry["bins"] != bins(signal, labels):
                    raise ProfileError(f"the profile's {signal} bins are not this server's: refresh it "
                                       "(rnnserve-train profile)")
                values = np.asarray(entry["counts"], dtype=np.int64)
                if values.shape != (len(entry["bins"]),) or (values < 0).any():
                    raise ProfileError(f"the profile's {signal} counts do not match its bins")
                counts[signal] = values
            return cls(int(doc["texts"]), str(doc["source"]), counts)
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, ProfileError):
                raise
            raise ProfileError(f"profile.json is not a profile: {exc!r}") from None


def build(stats: Sequence, probabilities: np.ndarray, source: str) -> Profile:
    """A reference profile of texts' TokenStats and probabilities float [N, C]."""
    return Profile(len(stats), source, counts_of(stats, probabilities))
