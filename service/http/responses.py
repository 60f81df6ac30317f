"""/v1 predictions from what the runtimes give: class labels, scores, top-k, probabilities, token statistics,
values."""

from __future__ import annotations

import numpy as np

from rnnserve.service.runtime.text import ClassificationResult


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
