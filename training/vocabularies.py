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


def hf_tokenizer_spec(path: Path, prep) -> TokenizerSpec:
    """A Hugging Face `tokenizers` file (tokenizer.json) -> spec, where its behaviour is matched exactly: a
    WordLevel model; no normalizer or Lowercase; the WhitespaceSplit pre-tokenizer; added tokens as they are
    (not normalized, no strip or single-word options); a TemplateProcessing post-processor with a special token
    before and/or after the text; its padding and truncation, or the flags'. The library itself, read here,
    gives what cannot be known otherwise: which characters it splits at and how it lower-cases each (a newer
    Unicode than this Python's). Anything else is refused with the reason; the gate then runs the library on
    the texts (importer.Pipeline.ids)."""
    from tokenizers import Tokenizer as HFTokenizer

    text = read_text(path, MAX_TEXT_BYTES, "--hf-tokenizer")
    try:
        data, library = json.loads(text), HFTokenizer.from_str(text)
    except Exception as exc:  # noqa: BLE001 - the library's own reason: not a tokenizers file
        raise ImportRefused(f"--hf-tokenizer {path.name} is not a Hugging Face tokenizers file: {exc}") from None
    model = data.get("model") or {}
    if model.get("type") == "WordPiece":
        raise ImportRefused("a WordPiece tokenizer splits each word into the longest pieces of its vocabulary "
                            "('##'-continued), which the package's tokenizer does not do; supported: WordLevel")
    if model.get("type") != "WordLevel":
        raise ImportRefused(f"a {model.get('type')} tokenizer is not supported (subword pieces); supported: WordLevel")
    lower = _hf_lowercase(data.get("normalizer"))
    pre = data.get("pre_tokenizer") or {}
    if pre.get("type") != "WhitespaceSplit":
        raise ImportRefused(f"pre-tokenizer {pre.get('type')}: its \\w and \\s are Rust regex's Unicode classes, "
                            "which Python's re does not match exactly; supported: WhitespaceSplit")
    vocabulary = dict(model.get("vocab") or {})
    specials = []
    for added in data.get("added_tokens") or []:
        if added.get("normalized") or added.get("single_word") or added.get("lstrip") or added.get("rstrip"):
            raise ImportRefused(f"added token {added.get('content')!r} is normalized or has single_word, lstrip or "
                                "rstrip set; supported: added tokens matched as they are")
        if vocabulary.setdefault(added["content"], added["id"]) != added["id"]:
            raise ImportRefused(f"added token {added['content']!r} has id {added['id']}, the vocabulary another")
        specials.append(added["content"])
    start, end = _hf_template(data.get("post_processor"), vocabulary)
    maxlen, padding, truncating, pad_id = _hf_lengths(data, prep, bool(start is not None or end is not None))
    unknown = model.get("unk_token")
    if unknown not in vocabulary:
        raise ImportRefused(f"the WordLevel unk_token {unknown!r} is not in its vocabulary")
    whitespace, overrides = _library_rules(library, lower)
    spec = TokenizerSpec(words=list(vocabulary), ids=list(vocabulary.values()), lower=lower, lower_ascii_only=False,
                         lower_per_character=lower, lower_overrides=overrides, special_tokens=specials,
                         filters=whitespace, split=" ", unknown_words="oov", oov_char=vocabulary[unknown],
                         start_char=start, end_char=end, pad_id=pad_id, index_from=0, maxlen=maxlen, padding=padding,
                         truncating=truncating)
    try:
        spec.validate()
    except ValueError as exc:
        raise ImportRefused(str(exc)) from None
    return spec


def _library_rules(library, lower: bool) -> tuple[str, dict[str, str]]:
    """(the characters the library's pre-tokenizer splits at, {character: its lower-case form} where the library's
    normalizer differs from Python's): measured on every code point, in one call each ("a" before each
    character: a split character ends up in no piece; NUL between characters: each one's lower-case form)."""
    chars = [chr(c) for c in range(1, 0x110000) if not 0xD800 <= c <= 0xDFFF]
    probe = "".join("a" + c for c in chars)
    covered = bytearray(len(probe))
    for _, (a, b) in library.pre_tokenizer.pre_tokenize_str(probe):
        covered[a:b] = b"\x01" * (b - a)
    whitespace = "".join(c for k, c in enumerate(chars) if not covered[2 * k + 1])
    if not lower:
        return whitespace, {}
    lowered = library.normalizer.normalize_str("\x00".join(chars)).split("\x00")
    if len(lowered) != len(chars):
        raise ImportRefused("the tokenizer's Lowercase changes NUL characters: not matched exactly")
    return whitespace, {c: low for c, low in zip(chars, lowered) if low != c.lower()}


def _hf_lowercase(normalizer) -> bool:
    """True for Lowercase (alone or in a Sequence), False for none; else refused."""
    if normalizer is None:
        return False
    steps = normalizer.get("normalizers") if normalizer.get("type") == "Sequence" else [normalizer]
    kinds = [step.get("type") for step in steps or []]
    if set(kinds) - {"Lowercase"}:
        raise ImportRefused(f"normalizer {', '.join(map(str, kinds))}: supported: none or Lowercase (Unicode "
                            "normalization forms, accent stripping and BERT's cleaning are not matched exactly)")
    return bool(kinds)


def _hf_template(post, vocabulary: dict) -> tuple[int | None, int | None]:
    """(start id, end id) of a TemplateProcessing post-processor's single-text template."""
    if post is None:
        return None, None
    single = post.get("single") if post.get("type") == "TemplateProcessing" else None
    if not single:
        raise ImportRefused(f"post-processor {post.get('type')}: supported: TemplateProcessing with a special token "
                            "before and/or after the text")
    kinds = ["A" if "Sequence" in piece else "S" for piece in single]
    if kinds.count("A") != 1 or len(single) > 3 or kinds not in (["A"], ["S", "A"], ["A", "S"], ["S", "A", "S"]):
        raise ImportRefused("the post-processor's template must be [special] $A [special]: one text, at most one "
                            "special token before and one after")
    ids = [vocabulary.get(piece["SpecialToken"]["id"]) for piece in single if "SpecialToken" in piece]
    tokens = [piece["SpecialToken"]["id"] for piece in single if "SpecialToken" in piece]
    for token, i in zip(tokens, ids):
        if i is None:
            raise ImportRefused(f"the post-processor's special token {token!r} is not in the vocabulary")
    start = ids[0] if kinds[0] == "S" else None
    end = ids[-1] if kinds[-1] == "S" else None
    return start, end


def _hf_lengths(data: dict, prep, adds_tokens: bool) -> tuple[int, str, str, int]:
    """(maxlen, padding, truncating, pad id) from the file's padding and truncation, else the flags."""
    maxlen, padding, truncating, pad_id = prep.maxlen, prep.padding, prep.truncating, 0
    if (truncation := data.get("truncation")) is not None:
        if adds_tokens:
            raise ImportRefused("truncation with a post-processor that adds tokens cuts the text to leave them room, "
                                "which the package's tokenizer does not do; truncate in your notebook instead")
        maxlen, truncating = truncation["max_length"], "post" if truncation["direction"] == "Right" else "pre"
    if (pad := data.get("padding")) is not None:
        fixed = pad.get("strategy") if isinstance(pad.get("strategy"), dict) else {}
        maxlen = fixed.get("Fixed", maxlen)
        padding, pad_id = "post" if pad["direction"] == "Right" else "pre", pad["pad_id"]
    if not maxlen:
        raise ImportRefused("give --maxlen: the length the ids were padded or cut to")
    return maxlen, padding, truncating, pad_id
