"""A PyTorch notebook's own preprocessing -> the one tokenizer spec (service/core/tokenizer.py), for ONNX imports.

A notebook's tokenizer is a few lines of Python: lower-case with `str.lower()`, punctuation replaced by a space
or deleted, tokens from `str.split()` or `re.findall(pattern, text)`, each looked up in a vocabulary (a text file
one token a line, or a `{token: id}` dict saved as JSON) with an unknown token's id or dropped, start and end
ids around them, padded with the padding token's id. Each rule is a flag (Preprocessing); the spec reproduces
them exactly, and the gate checks the user's own ids (--reference). A Hugging Face `tokenizers` file is read
by hf_tokenizer_spec, or refused with the reason where its behaviour cannot be matched exactly.
"""

from __future__ import annotations

import json
import string
from pathlib import Path

from rnnserve.service.core.tokenizer import TokenizerSpec
from rnnserve.training.untrusted import MAX_TEXT_BYTES, ImportRefused, read_text

# Python's str.split() splits on these (str.isspace), which `text.lower().split()` pipelines use.
UNICODE_WHITESPACE = "".join(chr(c) for c in range(0x110000) if chr(c).isspace())
PUNCTUATION = ("keep", "space", "delete")  # what happens to the 32 ASCII punctuation marks (string.punctuation)


def read_vocabulary(path: Path) -> dict[str, int]:
    """{token: id} from a JSON object (json.dump(vocab, f)) or a text file (one token a line; line i is id i)."""
    text = read_text(path, MAX_TEXT_BYTES, "--vocab")
    if path.suffix == ".json":
        try:
            vocabulary = json.loads(text)
        except ValueError as exc:
            raise ImportRefused(f"--vocab {path}: not JSON ({exc}); a .json vocabulary is a {{token: id}} object, "
                                "as json.dump(vocab, f) writes it") from None
        if not isinstance(vocabulary, dict) or not all(type(i) is int and i >= 0 for i in vocabulary.values()):
            raise ImportRefused(f"--vocab {path}: expected a JSON object of tokens to ids >= 0 ({{\"<pad>\": 0, "
                                "\"the\": 2, ...}), as json.dump(vocab, f) writes a dict")
        return vocabulary
    tokens = [line.rstrip("\r") for line in text.splitlines()]
    if len(set(tokens)) != len(tokens):
        repeated = next(t for i, t in enumerate(tokens) if t in tokens[:i])
        raise ImportRefused(f"--vocab {path}: token {repeated!r} is on two lines")
    return {token: i for i, token in enumerate(tokens)}


def token_id(vocabulary: dict[str, int], token: str | None, flag: str, path: Path) -> int | None:
    if token is None:
        return None
    if token not in vocabulary:
        raise ImportRefused(f"{flag} {token!r} is not a token of --vocab {path}")
    return vocabulary[token]


def vocab_spec(prep) -> TokenizerSpec:
    """The spec of a vocabulary file and the rules given as flags (training/importer.py's Preprocessing): Python's
    str.lower() when lower; ASCII punctuation kept, replaced by a space or deleted; tokens as str.split() splits
    (Unicode whitespace) or re.findall(token_pattern); a token not in the vocabulary becomes unknown_token's id,
    or vanishes without one; start and end tokens' ids around each text; padding with pad_token's id (else 0)."""
    path = Path(prep.vocab_file)
    vocabulary = read_vocabulary(path)
    if not prep.maxlen:
        raise ImportRefused("give --maxlen: the length the texts' ids were padded or cut to")
    if prep.punctuation not in PUNCTUATION:
        raise ImportRefused(f"--punctuation must be one of {', '.join(PUNCTUATION)}")
    oov = token_id(vocabulary, prep.unknown_token, "--unknown-token", path)
    pad = token_id(vocabulary, prep.pad_token, "--pad-token", path)
    start = token_id(vocabulary, prep.start_token, "--start-token", path)
    end = token_id(vocabulary, prep.end_token, "--end-token", path)
    punctuation = string.punctuation if prep.punctuation == "space" else ""
    # With a pattern the text's whitespace stays as it is (the pattern sees it); else str.split()'s.
    filters = punctuation + ("" if prep.token_pattern else UNICODE_WHITESPACE)
    spec = TokenizerSpec(
        words=list(vocabulary), ids=list(vocabulary.values()), lower=prep.lower, lower_ascii_only=False,
        filters=filters, split=" ", strip=string.punctuation if prep.punctuation == "delete" else "",
        token_pattern=prep.token_pattern, unknown_words="drop" if oov is None else "oov", oov_char=oov,
        start_char=start, end_char=end, pad_id=pad or 0, index_from=0, maxlen=prep.maxlen, padding=prep.padding,
        truncating=prep.truncating)
    try:
        spec.validate()
    except ValueError as exc:
        raise ImportRefused(str(exc)) from None
    return spec


def vocab_source(prep) -> dict:
    """What metadata records about a vocabulary file's preprocessing."""
    path = Path(prep.vocab_file)
    return {"kind": "vocabulary-file", "file": path.name, "lower": prep.lower, "punctuation": prep.punctuation,
            "split": prep.token_pattern and f"re.findall({prep.token_pattern!r})" or "str.split()",
            "unknown_token": prep.unknown_token, "pad_token": prep.pad_token, "start_token": prep.start_token,
            "end_token": prep.end_token, "maxlen": prep.maxlen, "padding": prep.padding,
            "truncating": prep.truncating}
