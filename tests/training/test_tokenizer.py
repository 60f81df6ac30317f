"""The tokenizer reproduces Keras's published datasets from raw text, and its rules one by one."""

import numpy as np
import pytest

from rnnserve.service.core.tokenizer import Tokenizer, TokenizerSpec, build_vocabulary
from rnnserve.training.data import imdb_raw_train_in_keras_order, load_keras_dataset, reuters_raw_train


def spec(**kw) -> TokenizerSpec:
    return TokenizerSpec(**({"words": ["the", "movie", "good", "bad", "café"], "maxlen": 6} | kw))


def test_imdb_raw_text_reproduces_x_train_exactly(data_dir):
    ds = load_keras_dataset("imdb", data_dir, num_words=10000)
    texts, labels = imdb_raw_train_in_keras_order(data_dir)
    order = np.arange(len(texts))
    np.random.RandomState(113).shuffle(order)  # load_data's shuffle of x_train
    tok = Tokenizer(ds.tokenizer)
    ours = [tok.encode(texts[i])[0] for i in order]
    assert len(ours) == len(ds.x_train) == 25000
    assert sum(a != b for a, b in zip(ours, ds.x_train)) == 0
    assert (labels[order] == ds.y_train).all()


def test_reuters_raw_text_reproduces_x_train_exactly(data_dir):
    ds = load_keras_dataset("reuters", data_dir)
    texts, labels = reuters_raw_train(data_dir)
    tok = Tokenizer(ds.tokenizer)
    ours = [tok.encode(t)[0] for t in texts]
    assert len(ours) == len(ds.x_train) == 8982
    assert sum(a != b for a, b in zip(ours, ds.x_train)) == 0
    assert (labels == ds.y_train).all()


def test_keras_ids_lowercase_filters_and_offsets():
    ids, oov = Tokenizer(spec()).encode("The MOVIE, was... good!")
    # start_char 1; rank r -> r + 3; "was" is not in the index and is dropped
    assert ids == [1, 4, 5, 6]
    assert oov == 1


def test_num_words_maps_rare_words_to_oov():
    ids, oov = Tokenizer(spec(num_words=6)).encode("the movie good bad")
    assert ids == [1, 4, 5, 2, 2]  # ranks 3 and 4 -> ids 6, 7 >= num_words -> oov_char 2
    assert oov == 2


def test_unknown_words_to_oov_when_asked():
    ids, _ = Tokenizer(spec(unknown_words="oov")).encode("the zebra")
    assert ids == [1, 4, 2]


def test_non_ascii_case_kept_unless_full_lowercase_and_replacement():
    assert Tokenizer(spec()).split_words("CAFÉ Café") == ["cafÉ", "café"]
    assert Tokenizer(spec(lower_ascii_only=False)).split_words("CAFÉ") == ["café"]
    assert Tokenizer(spec(non_ascii_replacement="?")).split_words("café") == ["caf?"]


@pytest.mark.parametrize("padding,truncating,expected", [
    ("pre", "pre", [[0, 0, 0, 1, 4, 5], [4, 5, 6, 7, 4, 5]]),
    ("post", "post", [[1, 4, 5, 0, 0, 0], [1, 4, 5, 6, 7, 4]]),
])
def test_padding_and_truncation_sides(padding, truncating, expected):
    tok = Tokenizer(spec(padding=padding, truncating=truncating))
    x, stats = tok(["the movie", "the movie good bad the movie"])
    assert x.tolist() == expected
    assert [s.truncated for s in stats] == [False, True]
    assert [s.kept for s in stats] == [3, 6]


@pytest.mark.parametrize("fast", [True, False])
@pytest.mark.parametrize("unknown", ["drop", "oov"])
def test_stats_count_every_word_before_truncation(fast, unknown):
    """Drift's per-text figures: words found (dropped unknown ones too) and ids before truncation."""
    tok = Tokenizer(spec(unknown_words=unknown, maxlen=3, num_words=6), fast=fast)
    texts = ["the movie", "the zzz movie good qqq bad", "", "zzz"]
    _, stats = tok(texts)
    assert [s.words for s in stats] == [len(tok.split_words(t)) for t in texts] == [2, 6, 0, 1]
    assert [s.length for s in stats] == [len(tok.encode(t)[0]) for t in texts]
    assert [s.oov for s in stats] == [tok.encode(t)[1] for t in texts]


def test_empty_text_is_all_padding_but_start():
    x, stats = Tokenizer(spec())([""])
    assert x.tolist() == [[0, 0, 0, 0, 0, 1]]
    assert stats[0].kept == 1


def test_spec_round_trip_and_rejects_bad_specs(tmp_path):
    s = spec(num_words=50)
    s.save(tmp_path / "t.json")
    assert TokenizerSpec.load(tmp_path / "t.json") == s
    with pytest.raises(ValueError, match="unknown tokenizer spec fields"):
        TokenizerSpec.from_dict({**vars(s), "surprise": 1})
    with pytest.raises(ValueError, match="padding"):
        TokenizerSpec.from_dict({**vars(s), "padding": "middle"})


def test_vocabulary_ranked_by_count_then_first_seen():
    words = build_vocabulary(["b a c", "a c", "a"], spec(words=[]))
    assert words == ["a", "c", "b"]
