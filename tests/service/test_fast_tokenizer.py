"""The compiled tokenizer gives the reference's ids, OOV counts, spans and padded rows: on both full raw
training sets and, property-based, on arbitrary Unicode under every rule of the spec."""

import json
import shutil
from dataclasses import fields, replace
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rnnserve.service.core import tokenizer as tokmod
from rnnserve.service.core.normalize import DEFAULT
from rnnserve.service.core.tokenizer import Tokenizer, TokenizerSpec
from rnnserve.training.data import imdb_raw_train_in_keras_order, load_keras_dataset, reuters_raw_train

if tokmod._fasttok is None:
    pytestmark = pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler: the reference serves alone")

WORDS = ["", "the", "movie", "good", "bad", "café", "caf?", "σας", "i̇", "a\rb", "x\xa0y", "\x00", "😀", "e\u0301", "??"]
TYPOGRAPHIC = "’‘“”–—\u2009\u3000\u200bﬁＡ…\u00b4\uff07\u2474"
SPECIAL = "ΣİıAZaz \xa0\r\n\t\x00😀\u0301éÉ?!.,'\"-_" + TYPOGRAPHIC + "".join(WORDS)
texts = st.text(alphabet=st.one_of(st.sampled_from(SPECIAL), st.characters()), max_size=60)


def both(spec: TokenizerSpec) -> tuple[Tokenizer, Tokenizer]:
    fast, ref = Tokenizer(spec), Tokenizer(spec, fast=False)
    assert fast.implementation == "c" and ref.implementation == "python"
    return fast, ref


def assert_same(spec: TokenizerSpec, batch: list[str], dynamic: bool = False) -> None:
    fast, ref = both(spec)
    for text in batch:
        norm = fast._normalized(text)[0]
        got = fast._fast.encode(norm, spans=True)
        if got is not None:  # None: a lone surrogate, which the compiled path hands to the reference
            assert (got[0], got[1], [tuple(s) for s in got[2]]) == ref._encode_spans(norm), repr(text)
        assert fast.encode_spans(text) == ref.encode_spans(text) and fast.encode(text) == ref.encode(text)
    x_fast, stats_fast = fast(batch, dynamic=dynamic)
    x_ref, stats_ref = ref(batch, dynamic=dynamic)
    assert x_fast.dtype == x_ref.dtype == np.int64 and x_fast.flags.c_contiguous
    assert x_fast.tolist() == x_ref.tolist()
    assert stats_fast == stats_ref


@pytest.mark.parametrize("dataset", ["imdb", "reuters"])
def test_full_raw_training_sets_give_identical_ids(data_dir, dataset):
    if dataset == "imdb":
        ds = load_keras_dataset("imdb", data_dir, num_words=10000)
        texts, _ = imdb_raw_train_in_keras_order(data_dir)
    else:
        ds = load_keras_dataset("reuters", data_dir)
        texts, _ = reuters_raw_train(data_dir)
    texts = list(texts)
    # and the PyTorch notebooks' rules: a {token: id} vocabulary, padding, start and end ids of their own,
    # Python's lower-casing a character at a time (non-ASCII texts then go to the reference)
    rng = np.random.default_rng(0)
    pytorch = replace(ds.tokenizer, ids=[int(i) for i in rng.permutation(len(ds.tokenizer.words)) + 4], index_from=0,
                      num_words=None, pad_id=1, start_char=2, end_char=3, oov_char=0, unknown_words="oov",
                      lower_ascii_only=False, lower_per_character=True, padding="post", truncating="post")
    for spec in (ds.tokenizer, pytorch):
        fast, ref = both(spec)
        mismatches = sum(fast.encode(t) != ref.encode(t) for t in texts)
        assert mismatches == 0 and len(texts) in (25000, 8982)
        for dynamic in (False, True):
            assert_same(spec, texts[:2000], dynamic)


def spec_of(num_words, unknown, replacement, start, padding, truncating, maxlen, lower, normalization, ascii_lower,
            filters, strip, ids, end, pad_id, per_character) -> TokenizerSpec:
    spec = TokenizerSpec(words=WORDS, num_words=num_words, unknown_words=unknown, non_ascii_replacement=replacement,
                         start_char=start, padding=padding, truncating=truncating, maxlen=maxlen, lower=lower,
                         normalization=normalization, lower_ascii_only=ascii_lower, filters=filters, strip=strip,
                         end_char=end, pad_id=pad_id, lower_per_character=per_character and lower and not ascii_lower)
    return spec if ids is None else replace(spec, ids=ids, index_from=0, num_words=None)


SPECS = st.builds(
    spec_of,
    st.sampled_from([None, 6, 9]), st.sampled_from(["drop", "oov"]), st.sampled_from([None, "?", "??", "é", ""]),
    st.sampled_from([1, None]), st.sampled_from(["pre", "post"]), st.sampled_from(["pre", "post"]),
    st.integers(1, 8), st.booleans(), st.sampled_from([[], DEFAULT, ["nfkc"], ["spaces", "quotes"]]),
    # Python's full lower-casing and non-ASCII filters or strip: the compiled path takes ASCII texts only
    st.booleans(), st.sampled_from([tokmod.KERAS_FILTERS, "!…\t\n", tokmod.KERAS_FILTERS + "\xa0\u3000"]),
    st.sampled_from(["", "'", "'é"]),
    # a {token: id} vocabulary (ids in any order, repeated ids too), end ids, padding ids, per-character lowering
    st.sampled_from([None, [7 * i % 11 for i in range(len(WORDS))], [0] * len(WORDS)]), st.sampled_from([None, 3]),
    st.sampled_from([0, 5]), st.booleans())


@settings(max_examples=400, deadline=None)
@given(spec=SPECS, batch=st.lists(texts, min_size=1, max_size=6), dynamic=st.booleans())
def test_arbitrary_unicode_matches_the_reference(spec, batch, dynamic):
    assert_same(spec, batch, dynamic)


@settings(max_examples=200, deadline=None)
@given(text=texts, replacement=st.sampled_from([None, "?"]))
def test_spans_index_the_original_text(text, replacement):
    tok = Tokenizer(TokenizerSpec(words=WORDS, non_ascii_replacement=replacement))
    for word, start, end in tok.word_spans(text):
        piece = text[start:end].translate(tok._table)
        if replacement:
            piece = "".join(c if c.isascii() else replacement for c in piece)
        assert piece == word


def test_spans_of_repeated_words_and_punctuation():
    tok = Tokenizer(TokenizerSpec(words=WORDS))
    text = "The movie... THE movie, café!"
    ids, oov, spans = tok._fast.encode(text, spans=True)
    assert [text[a:b] for a, b in spans] == ["", "The", "movie", "THE", "movie", "café"]
    assert ids == [1, 5, 6, 5, 6, 9] and oov == 0


def test_specs_with_non_ascii_rules_compile_for_ascii_texts_and_leave_the_others_to_the_reference():
    full_lower = Tokenizer(TokenizerSpec(words=WORDS, lower_ascii_only=False))
    unicode_filter = Tokenizer(TokenizerSpec(words=WORDS, filters="!…"))
    assert full_lower.implementation == unicode_filter.implementation == "c"
    assert full_lower._fast.encode("THE Movie") is not None and full_lower._fast.encode("İ the") is None
    assert full_lower.encode("İ the ΣΑΣ")[0] == [1, 12, 5, 11]  # "i̇", "the", "σας" (final sigma)
    assert unicode_filter.encode("good…bad")[0] == [1, 7, 8]
    assert [s for _, *s in full_lower.word_spans("İx the")] == [[0, 2], [3, 6]]


@settings(max_examples=300, deadline=None)
@given(text=texts)
def test_normalized_spans_cover_the_original_characters_each_word_came_from(text):
    tok = Tokenizer(TokenizerSpec(words=WORDS, normalization=DEFAULT))
    normalize = tok._normalize
    for word, start, end in tok.word_spans(text):
        assert 0 <= start < end <= len(text)
        # the original characters, normalized alone, hold the word (a group may also hold split characters)
        assert word in normalize(text[start:end])[0].translate(tok._table)


def test_typographic_apostrophes_keep_the_negation():
    spec = TokenizerSpec(words=["i", "didn't", "like", "it", "wasn't", "good"], normalization=DEFAULT)
    tok, plain = Tokenizer(spec), Tokenizer(TokenizerSpec(words=spec.words))
    ascii_text = "I didn't like it. It wasn't good."
    for variant in ("I didn\u2019t like it. It wasn\u2019t good.", "I didn\u02bct like it.\u00a0It wasn\uff07t good.",
                    "I\u3000didn\u2019t like it. It wasn\u2019t\u2009good."):
        assert tok.encode(variant) == tok.encode(ascii_text) == plain.encode(ascii_text)
        assert plain.encode(variant)[1] >= 2  # without normalization the negations are unknown words
    text = "Ｉ didn\u2019t — ﬁne"
    assert [(w, text[a:b]) for w, a, b in tok.word_spans(text)] == [("i", "Ｉ"), ("didn't", "didn\u2019t"),
                                                                    ("fine", "ﬁne")]
    ids, _, spans = tok.encode_spans(text)
    assert [text[a:b] for a, b in spans] == ["", "Ｉ", "didn\u2019t"] and ids[:3] == [1, 4, 5]


def test_token_patterns_are_left_to_the_reference():
    """Regular expressions are Python re's alone: the compiled path declines every spec with one."""
    spec = TokenizerSpec(words=WORDS, token_pattern=r"\w+", lower_ascii_only=False, filters="", start_char=None)
    assert Tokenizer(spec).implementation == "python"
    assert Tokenizer(spec).word_spans("The movie's café!") == [("the", 0, 3), ("movie", 4, 9), ("s", 10, 11),
                                                               ("café", 12, 16)]


def test_a_spec_with_an_unknown_rule_is_refused():
    with pytest.raises(ValueError, match="unknown or repeated normalization rules"):
        TokenizerSpec.from_dict({**TokenizerSpec(words=[]).__dict__, "normalization": ["lowercase-v9"]})


NEW_FIELDS = {"ids", "token_pattern", "lower_per_character", "lower_overrides", "special_tokens", "end_char", "pad_id"}


def test_packages_written_before_the_new_fields_read_as_they_always_did():
    """The committed fixtures' and bundled models' tokenizer.json files predate the PyTorch and Hugging Face
    fields: they load, with the defaults that keep their meaning, and their ids are padded with 0."""
    root = Path(__file__).resolve().parents[2]
    files = sorted(root.glob("tests/fixtures/*/*/*/tokenizer.json")) + sorted(root.glob("models/*/*/tokenizer.json"))
    assert len(files) >= 10 and NEW_FIELDS <= {f.name for f in fields(TokenizerSpec)}
    for path in files:
        data = json.loads(path.read_text(encoding="utf-8"))
        assert not NEW_FIELDS & set(data), path
        spec = TokenizerSpec.from_dict(data)
        assert spec.ids is None and spec.token_pattern is None and spec.pad_id == 0 and spec.end_char is None
        ids, _ = Tokenizer(spec)(["the movie"], maxlen=spec.maxlen + 3)
        assert (ids[0] == 0).sum() >= 3, path
