"""The char_level tokenizer mode gives Keras's Tokenizer(char_level=True) ids (tf_keras, Keras 2's own
preprocessing code: Keras 3 dropped it) on the full raw Reuters training text and on arbitrary Unicode."""

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rnnserve.service.core.tokenizer import Tokenizer, TokenizerSpec, build_vocabulary
from rnnserve.training.data import reuters_raw_train

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
keras_text = pytest.importorskip("tf_keras.preprocessing.text")


def keras_like(words=(), num_words=None, oov=False) -> TokenizerSpec:
    """Keras's Tokenizer conventions: ranks from 1 (2 with an oov_token at 1), no start token, full
    Unicode lower-casing, unknown characters dropped (or oov_token)."""
    return TokenizerSpec(words=list(words), char_level=True, lower_ascii_only=False, start_char=None,
                         oov_char=1 if oov else None, index_from=1 if oov else 0, num_words=num_words,
                         unknown_words="oov" if oov else "drop", maxlen=100)


def both(train: list[str], texts: list[str], num_words=None, oov=False):
    keras_tok = keras_text.Tokenizer(char_level=True, num_words=num_words, oov_token="<oov>" if oov else None)
    keras_tok.fit_on_texts(train)
    ours = Tokenizer(keras_like(build_vocabulary(train, keras_like()), num_words, oov))
    return keras_tok, ours, keras_tok.texts_to_sequences(texts), [ours.encode(t)[0] for t in texts]


@pytest.mark.parametrize("num_words,oov", [(None, False), (40, False), (40, True)])
def test_char_ids_equal_keras_on_the_raw_reuters_training_text(data_dir, num_words, oov):
    texts, _ = reuters_raw_train(data_dir)
    train, held_out = texts[:6000], texts[6000:]  # unseen characters in the held-out part: dropped or OOV
    keras_tok, ours, expected, got = both(train, held_out, num_words, oov)
    if not oov:
        assert ours.spec.words == list(keras_tok.word_index)  # same ranks: count, then first appearance
    assert len(got) == 2982 and sum(a != b for a, b in zip(got, expected)) == 0


@settings(max_examples=150, deadline=None)
@given(st.lists(st.text(max_size=40), min_size=1, max_size=6), st.lists(st.text(max_size=40), max_size=6),
       st.sampled_from([None, 5]), st.booleans())
def test_char_ids_equal_keras_on_any_unicode(train, texts, num_words, oov):
    _, ours, expected, got = both(train, texts + train, num_words, oov)
    assert got == expected


def test_char_spans_point_at_each_character():
    tok = Tokenizer(keras_like(["a", "b", " ", "i", "\u0307"]))
    ids, oov, spans = tok.encode_spans("Ab İ?")
    assert ids == [1, 2, 3, 4, 5] and oov == 1  # "İ" lowers to "i" + a combining dot, "?" is unknown
    assert spans == [(0, 1), (1, 2), (2, 3), (3, 4), (3, 4)]
    assert tok.implementation == "python"  # the compiled tokenizer is word-level only
