"""Shaping /v1 answers, and the request limits every text-taking surface checks before any work."""

from __future__ import annotations

from service.errors import PayloadTooLarge
from service.runtime import Classified

MAX_TEXT_CHARS = 100_000  # the default limit on one text, for the server and the command-line scorer


def check_limits(texts: list[str], max_texts: int, max_chars: int) -> None:
    if len(texts) > max_texts:
        raise PayloadTooLarge(f"{len(texts)} texts in one request; the limit is {max_texts}")
    for i, text in enumerate(texts):
        if len(text) > max_chars:
            raise PayloadTooLarge(f"text {i} has {len(text)} characters; the limit is {max_chars}")


def to_predictions(labels: list[str], result: Classified, top_k: int = 1,
                   return_probabilities: bool = False) -> list[dict]:
    k = min(top_k, len(labels))
    out = []
    for p, st in zip(result.probs.tolist(), result.stats):
        # Python's sort is stable with reverse=True too: ties keep the lower label index first, as argmax.
        idx = sorted(range(len(p)), key=p.__getitem__, reverse=True)[:k]
        pred = {
            "label": labels[idx[0]],
            "score": p[idx[0]],
            "top_k": [{"label": labels[j], "probability": p[j]} for j in idx],
            "tokens": {"kept": st.tokens, "oov": st.oov, "truncated": st.truncated},
        }
        if return_probabilities:
            pred["probabilities"] = dict(zip(labels, p))
        out.append(pred)
    return out
