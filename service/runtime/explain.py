"""Per-word explanations by occlusion: how much each word of a text moves one label's probability.

Model-agnostic and exact: a word's contribution is p(label | text) - p(label | text without that word).
A variant is the text's ids without that word's id (what the text with the word blanked out tokenizes to),
padded and truncated as any text: it is built from the ids in the run that needs it, never as a string, so
an explanation's memory does not grow with the text's length times its words.

Words the model never sees (dropped as unknown, or cut by truncation) change nothing when removed: they get
contribution 0 and cost no run. "window" occludes runs of `window` consecutive words instead of one word at
a time (about `window` times fewer runs, for long texts) and shares each run's change equally among its words.
"""

from __future__ import annotations

from dataclasses import dataclass

from rnnserve.service.core.tokenizer import Tokenizer


@dataclass
class Word:
    text: str  # the word as written in the original text, text[start:end]
    token: str  # the word as the model's vocabulary sees it: normalized, lower-cased, filtered
    start: int
    end: int
    id: int | None  # its token id, None when the model does not see it
    status: str  # kept | oov (kept as the OOV id) | dropped (unknown word) | truncated (cut by maxlen)
    position: int | None = None  # index of its id in the text's unpadded ids, when the model sees it
    contribution: float = 0.0

    def to_dict(self) -> dict:
        return {"text": self.text, "token": self.token, "start": self.start, "end": self.end, "id": self.id,
                "status": self.status, "contribution": self.contribution}


def read_words(tokenizer: Tokenizer, text: str) -> tuple[list[Word], list[int]]:
    """Every word of the text with its span, its id and what the tokenizer did with it; and the text's
    unpadded ids."""
    spec = tokenizer.spec
    ids, _, spans = tokenizer.encode_spans(text)
    cut = max(0, len(ids) - spec.maxlen)
    kept = range(cut, len(ids)) if spec.truncating == "pre" else range(len(ids) - cut)
    position = {span: i for i, span in enumerate(spans)}  # the start token's (0, 0) is no word's span
    words = []
    for token, start, end in tokenizer.word_spans(text):
        i = position.get((start, end))
        if i is None:
            words.append(Word(text[start:end], token, start, end, None, "dropped"))
        elif i not in kept:
            words.append(Word(text[start:end], token, start, end, None, "truncated"))
        else:
            status = "oov" if ids[i] == spec.oov_char else "kept"
            words.append(Word(text[start:end], token, start, end, ids[i], status, i))
    return words, ids


def occlusion_groups(words: list[Word], method: str, window: int) -> list[list[int]]:
    """Indices of the words each variant leaves out: the words the model sees, one at a time or in windows."""
    seen = [i for i, w in enumerate(words) if w.id is not None]
    size = 1 if method == "occlusion" else window
    return [seen[i:i + size] for i in range(0, len(seen), size)]


def left_out(words: list[Word], groups: list[list[int]]) -> list[tuple[int, ...]]:
    """For each group, the positions of its words' ids: what its variant leaves out of the text's ids."""
    return [tuple(p for i in group if (p := words[i].position) is not None) for group in groups]


def attribute(words: list[Word], groups: list[list[int]], full: float, without: list[float]) -> None:
    """Set each word's contribution from the label's probability with the text whole and with each group out."""
    for group, p in zip(groups, without):
        share = (full - p) / len(group)
        for i in group:
            words[i].contribution = share
