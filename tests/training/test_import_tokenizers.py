"""training/preprocessing.py's mappings give the ids of the users' own Keras preprocessing, measured against
the libraries themselves: Keras 3's `TextVectorization` layer and tf_keras's `Tokenizer` + `pad_sequences`.

- Full raw texts: every word-level configuration (the four standardize modes; the Tokenizer with num_words and
  an oov_token, with its defaults, and cased with ASCII filters) on all 25,000 IMDB reviews and all 8,982
  Reuters texts; the character-level ones (split="character", char_level=True), whose reference is pure
  Python, on all of Reuters and the first 5,000 reviews. Each vocabulary is fitted on the first two thirds
  and every text tokenized, so unknown words occur. Where the spec fits the compiled path, what serves it,
  that path runs on every text and the reference (`fast=False`) on every fifth, which halves those cases' time
  (test_fast_tokenizer.py compares the two on the full raw texts, and on any text by properties);
  where it does not fit, `Tokenizer(spec)` is the reference and runs on every text.
- Property-based: arbitrary Unicode (accents, ß, İ, Σ/ς, typographic quotes, Unicode spaces, \\x0b \\x0c
  \\r \\x85, emoji, combining marks, NUL) against layers and Tokenizers fitted once on a small corpus with
  non-ASCII words; lone surrogates (category Cs) only where no TensorFlow string is involved (UTF-8 cannot
  carry them); the compiled path's spans equal the reference's for specs that delete characters.
- Refusals name what cannot be reproduced; the service answers a lone surrogate in a JSON body with a 400.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import string
import tempfile
from collections import Counter
from functools import cache
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rnnserve.service.core import tokenizer as tokmod
from rnnserve.service.core.normalize import DEFAULT
from rnnserve.service.core.tokenizer import KERAS_FILTERS, Tokenizer, TokenizerSpec
from rnnserve.service.settings import BUNDLED_MODELS
from rnnserve.training.data import imdb_raw_train_in_keras_order, reuters_raw_train
from rnnserve.training.preprocessing import PreprocessingError, from_keras_tokenizer, from_text_vectorization
from tests.conftest import in_process, wait_ready

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")
keras_text = pytest.importorskip("tf_keras.preprocessing.text")
keras_sequence = pytest.importorskip("tf_keras.preprocessing.sequence")

BATCH = 4096  # texts per TextVectorization call
FULL, CHARS_SUBSET = None, 5000
REFERENCE_EVERY = 5  # the reference's share of the texts where the compiled path serves the spec
# ASCII punctuation kept inside words (apostrophes, hyphens), \r also a separator: the compiled path fits it.
ASCII_FILTERS = '!"#$%&()*+,./:;<=>?@[\\]^_`{|}~\t\n\r'


def implementation(compiled_fits: bool) -> str:
    """What `Tokenizer(spec).implementation` must say (test_fast_tokenizer.py fails where the module is
    missing but a compiler is not)."""
    return "c" if compiled_fits and tokmod._fasttok is not None else "python"


def assert_ours_equal(spec: TokenizerSpec, texts: list[str], expected: np.ndarray, compiled_fits: bool) -> None:
    """Our padded ids equal `expected`: from the path that serves the spec on every text and, where that is the
    compiled path, from the reference on every fifth (the module docstring says why)."""
    fast = Tokenizer(spec)
    assert fast.implementation == implementation(compiled_fits)
    runs = [(fast, texts, expected)]
    if fast.implementation == "c":
        runs.append((Tokenizer(spec, fast=False), texts[::REFERENCE_EVERY], expected[::REFERENCE_EVERY]))
    for tok, some, want in runs:
        got = tok(some)[0]
        assert got.shape == want.shape
        bad = np.flatnonzero((got != want).any(axis=1))
        assert not len(bad), (f"{tok.implementation}: {len(bad)} of {len(some)} texts differ, first "
                              f"{some[bad[0]][:300]!r}: ours {got[bad[0]].tolist()} != {want[bad[0]].tolist()}")


@pytest.fixture(scope="module")
def corpora(data_dir) -> dict[str, list[str]]:
    imdb, _ = imdb_raw_train_in_keras_order(data_dir)
    reuters, _ = reuters_raw_train(data_dir)
    assert len(imdb) == 25000 and len(reuters) == 8982
    return {"imdb": list(imdb), "reuters": list(reuters)}


def texts_of(corpora, dataset: str, imdb_limit: int | None) -> tuple[list[str], list[str]]:
    """(fit texts, texts to tokenize): the first two thirds, and all."""
    texts = corpora[dataset] if dataset == "reuters" or imdb_limit is None else corpora[dataset][:imdb_limit]
    return texts[: len(texts) * 2 // 3], texts


def vectorize(layer, texts: list[str]) -> np.ndarray:
    return np.concatenate([np.asarray(layer(texts[i:i + BATCH])) for i in range(0, len(texts), BATCH)])


# (TextVectorization arguments, IMDB texts used: None for all)
TV_CONFIGS = [
    (dict(max_tokens=20000, output_sequence_length=200), FULL),  # standardize="lower_and_strip_punctuation"
    (dict(max_tokens=20000, output_sequence_length=200, standardize="lower"), FULL),
    (dict(max_tokens=20000, output_sequence_length=200, standardize="strip_punctuation"), FULL),
    (dict(max_tokens=20000, output_sequence_length=200, standardize=None), FULL),
    (dict(max_tokens=30, output_sequence_length=500, split="character"), CHARS_SUBSET),
    (dict(output_sequence_length=300, split="character", standardize=None), CHARS_SUBSET),
]


@pytest.mark.parametrize("dataset", ["imdb", "reuters"])
@pytest.mark.parametrize("kwargs,imdb_limit", TV_CONFIGS, ids=["lower_and_strip_punctuation", "lower",
                                                              "strip_punctuation", "None", "character-30",
                                                              "character-None"])
def test_text_vectorization_ids_on_the_raw_training_texts(corpora, dataset, kwargs, imdb_limit):
    fit, texts = texts_of(corpora, dataset, imdb_limit)
    layer = keras.layers.TextVectorization(**kwargs)
    layer.adapt(tf.data.Dataset.from_tensor_slices(fit).batch(BATCH))
    expected = vectorize(layer, texts)
    assert (expected[:, -1] != 0).any() and (expected[:, -1] == 0).any()  # some truncated, some padded
    assert (expected == 1).any() or dataset == "reuters" and "max_tokens" not in kwargs  # OOV (Reuters is ASCII)
    spec = from_text_vectorization(layer.get_config(), layer.get_vocabulary())
    assert_ours_equal(spec, texts, expected, compiled_fits=kwargs.get("split") != "character")


# (Tokenizer arguments, pad_sequences arguments, IMDB texts used, whether the compiled path fits)
KERAS_CONFIGS = [
    # Python's lower-casing: compiled for ASCII texts, the others through the reference
    (dict(num_words=10000, oov_token="<OOV>"), dict(maxlen=200, padding="post", truncating="post"), FULL, True),
    (dict(), dict(maxlen=200, padding="pre", truncating="pre"), FULL, True),
    (dict(char_level=True, oov_token="UNK"), dict(maxlen=500, padding="pre", truncating="post"), CHARS_SUBSET, False),
    (dict(lower=False, filters=ASCII_FILTERS), dict(maxlen=200, padding="post", truncating="pre"), FULL, True),
]


@pytest.mark.parametrize("dataset", ["imdb", "reuters"])
@pytest.mark.parametrize("kwargs,padding,imdb_limit,compiled_fits", KERAS_CONFIGS,
                         ids=["num_words-oov-post", "defaults-pre", "char_level-oov", "cased-ascii-filters"])
def test_keras_tokenizer_ids_on_the_raw_training_texts(corpora, dataset, kwargs, padding, imdb_limit, compiled_fits):
    fit, texts = texts_of(corpora, dataset, imdb_limit)
    keras_tok = keras_text.Tokenizer(**kwargs)
    keras_tok.fit_on_texts(fit)
    expected = keras_sequence.pad_sequences(keras_tok.texts_to_sequences(texts), **padding)
    spec = from_keras_tokenizer(keras_tok.to_json(), **padding)
    assert_ours_equal(spec, texts, expected, compiled_fits)


# Property-based -------------------------------------------------------------------------------------------

CORPUS = [
    "The café in İstanbul: naïve Straße, STRASSE and straße! ß ẞ",
    "ΣΑΣ σας Σίσυφος ΟΔΟΣ — “quoted” ‘words’ don't it’s «guillemets»",
    "emoji 😀 👍🏽 😀 e\u0301 é É résumé RÉSUMÉ",
    "a\xa0b x\u3000y z\u2009w em\u2003sp tab\tsep new\nline cr\rlf vt\x0bff\x0c nel\x85x ls\u2028ps\u2029",
    "nul\x00byte ǅ ﬁ Ａ … ı i̇ unk UNK <oov> [UNK]",
    "The the THE movie, movie; good! bad? (great) [ok] {x} <html> a-b a_b 3.14 50% $5 #1 @me",
    "the movie was good the movie was bad the end",
]
PIECES = sorted({w for text in CORPUS for w in text.split()} | {"[UNK]", "<OOV>", "unk"})
SPECIAL = ("ΣİıßẞAZaz0 'ʼ’‘“”\"«»–—-_.,;:!?()[]{}<>/\\|@#$%^&*+=~`…\xa0\u2000\u2001\u2002\u2003\u2004\u2005"
           "\u2006\u2007\u2008\u2009\u200a\u200b\u3000\u0085\u2028\u2029\x1c\x1d\x1e\x1f\t\n\x0b\x0c\r\x00"
           "😀👍🏽\u0301\u0307\ufeffﬁＡéÉ")


def texts(surrogates: bool) -> st.SearchStrategy[str]:
    chars = st.characters() if surrogates else st.characters(codec="utf-8", exclude_categories=("Cs",))
    piece = st.one_of(st.sampled_from(PIECES), st.sampled_from(SPECIAL), chars)
    return st.lists(piece, max_size=16).map("".join)


UTF8_TEXTS = st.lists(texts(surrogates=False), min_size=1, max_size=5)
ANY_TEXTS = st.lists(texts(surrogates=True), min_size=1, max_size=5)
PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

TV_SMALL = [dict(standardize=standardize, split=split, output_sequence_length=length)
            for standardize in ("lower_and_strip_punctuation", "lower", "strip_punctuation", None)
            for split, length in (("whitespace", 7), ("character", 25))]
TV_SMALL.append(dict(max_tokens=8, output_sequence_length=4))  # most words OOV


@cache
def tv_pairs() -> list[tuple[object, Tokenizer, Tokenizer]]:
    """Each TextVectorization layer, adapted once on CORPUS, with our fast and reference tokenizers."""
    pairs = []
    for kwargs in TV_SMALL:
        layer = keras.layers.TextVectorization(**kwargs)
        layer.adapt(CORPUS * 2 + CORPUS[-2:])
        spec = from_text_vectorization(layer.get_config(), layer.get_vocabulary())
        fast = Tokenizer(spec)
        assert fast.implementation == implementation(kwargs.get("split") != "character"), kwargs
        pairs.append((layer, fast, Tokenizer(spec, fast=False)))
    assert any(not w.isascii() for w in pairs[0][1].spec.words)
    return pairs


@PROPERTY
@given(batch=UTF8_TEXTS)
def test_text_vectorization_ids_on_arbitrary_unicode(batch):
    for layer, fast, ref in tv_pairs():
        expected = np.asarray(layer(batch))
        for tok in (fast, ref):
            assert tok(batch)[0].tolist() == expected.tolist(), (layer.get_config()["standardize"], tok.implementation)


KERAS_SMALL = [  # (Tokenizer arguments, whether the compiled path fits: for ASCII texts where lower=True)
    (dict(), True),
    (dict(num_words=12, oov_token="<OOV>"), True),
    (dict(oov_token="unk"), True),  # a word of the corpus too: fit_on_texts leaves rank 1 unused
    (dict(char_level=True, oov_token="UNK"), False),
    (dict(char_level=True, lower=False, num_words=20), False),
    (dict(lower=False, filters=ASCII_FILTERS), True),
    (dict(lower=False, filters=ASCII_FILTERS, split="|", num_words=15, oov_token="<OOV>"), True),
    (dict(filters=KERAS_FILTERS + "“”‘’«»…—–\xa0\u3000", split="--"), False),
]


@cache
def keras_fitted() -> list:
    fitted = []
    for kwargs, _ in KERAS_SMALL:
        keras_tok = keras_text.Tokenizer(**kwargs)
        keras_tok.fit_on_texts(CORPUS * 2 + CORPUS[-2:] + ["a|b|café|the movie"])
        fitted.append(keras_tok)
    return fitted


@cache
def ours(i: int, padding: str, truncating: str) -> tuple[Tokenizer, Tokenizer]:
    spec = from_keras_tokenizer(keras_fitted()[i].to_json(), maxlen=6, padding=padding, truncating=truncating)
    fast = Tokenizer(spec)
    assert fast.implementation == implementation(KERAS_SMALL[i][1]), KERAS_SMALL[i]
    return fast, Tokenizer(spec, fast=False)


@PROPERTY
@given(batch=ANY_TEXTS, padding=st.sampled_from(["pre", "post"]), truncating=st.sampled_from(["pre", "post"]))
def test_keras_tokenizer_ids_on_arbitrary_unicode(batch, padding, truncating):
    """Pure Python on both sides, so lone surrogates are compared too."""
    for i, keras_tok in enumerate(keras_fitted()):
        sequences = keras_tok.texts_to_sequences(batch)
        expected = keras_sequence.pad_sequences(sequences, maxlen=6, padding=padding, truncating=truncating).tolist()
        for tok in ours(i, padding, truncating):
            assert tok(batch)[0].tolist() == expected, (KERAS_SMALL[i], tok.implementation)
            assert [tok.encode(t)[0] for t in batch] == sequences


STRIP_SPECS = [  # specs that delete characters, all within the compiled path
    *(from_text_vectorization(dict(standardize=s, split="whitespace", output_sequence_length=5),
                              ["", "[UNK]", *words]) for s in ("lower_and_strip_punctuation", "strip_punctuation")
      for words in (["the", "movie", "dont", "café", "naïve", "its", "ab"], [])),
    TokenizerSpec(words=["dont", "its", "the", "café", "caf?", "e\u0301", "ab"], strip="'-",
                  filters=KERAS_FILTERS.replace("-", ""), maxlen=5),
    TokenizerSpec(words=["dont", "its", "the", "café", "caf?", "ab"], strip="'-.", filters=" \t\n",
                  non_ascii_replacement="?", unknown_words="oov", normalization=DEFAULT, maxlen=5),
    TokenizerSpec(words=["dont", "the", "ab"], strip=string.punctuation, filters="\t\n\r", lower=False,
                  non_ascii_replacement="", start_char=None, maxlen=5, padding="post", truncating="post"),
]


@PROPERTY
@given(batch=ANY_TEXTS, which=st.sampled_from(range(len(STRIP_SPECS))), dynamic=st.booleans())
def test_compiled_spans_equal_the_reference_where_characters_are_deleted(batch, which, dynamic):
    spec = STRIP_SPECS[which]
    fast, ref = Tokenizer(spec), Tokenizer(spec, fast=False)
    assert fast.implementation == implementation(True)
    for text in batch:
        assert fast.encode_spans(text) == ref.encode_spans(text), repr(text)
        assert fast.encode(text) == ref.encode(text)
        if spec.normalization:
            continue
        # each word is its span, translated: deleted characters inside it vanish, none lie at its ends
        for word, start, end in ref.word_spans(text):
            piece = text[start:end].translate(ref._table)
            if spec.non_ascii_replacement is not None:
                piece = "".join(c if c.isascii() else spec.non_ascii_replacement for c in piece)
            assert piece == word
            assert text[start] not in spec.strip and text[end - 1] not in spec.strip
    x_fast, stats_fast = fast(batch, dynamic=dynamic)
    x_ref, stats_ref = ref(batch, dynamic=dynamic)
    assert x_fast.tolist() == x_ref.tolist() and stats_fast == stats_ref


def test_deleted_characters_join_the_word_around_them_and_spans_skip_them():
    spec = from_text_vectorization(dict(standardize="lower_and_strip_punctuation", split="whitespace",
                                        output_sequence_length=6), ["", "[UNK]", "dont", "the", "end"])
    text = "'Don't'  ...  THE-END!"
    for tok in (Tokenizer(spec), Tokenizer(spec, fast=False)):
        ids, oov, spans = tok.encode_spans(text)
        assert ids == [2, 1] and oov == 1  # "theend" is unknown, "..." vanished
        assert [text[a:b] for a, b in spans] == ["Don't", "THE-END"]


# Refusals --------------------------------------------------------------------------------------------------

def layer_config(**kwargs) -> tuple[dict, list[str]]:
    layer = keras.layers.TextVectorization(vocabulary=["the", "movie"], **kwargs)
    return layer.get_config(), layer.get_vocabulary()


def custom_standardize(x):
    return tf.strings.lower(x)


@pytest.mark.parametrize("kwargs,maxlen,message", [
    (dict(standardize=custom_standardize, output_sequence_length=5), None, "standardize='custom_standardize' is a "
                                                                           "custom function"),
    (dict(output_mode="multi_hot"), None, "output_mode='multi_hot' gives one vector per text"),
    (dict(output_mode="count"), None, "output_mode='count'"),
    (dict(output_mode="tf_idf", idf_weights=[1.0, 1.0]), None, "output_mode='tf_idf'"),
    (dict(ngrams=2, output_sequence_length=5), None, "ngrams=2 is not supported"),
    (dict(split=None, output_sequence_length=5), None, "split=None gives one id per text"),
    (dict(ragged=True), None, "ragged=True gives no fixed-length ids"),
    (dict(), None, "has no output_sequence_length"),
    (dict(output_sequence_length=5), 7, "--maxlen 7 differs from the layer's output_sequence_length 5"),
], ids=["standardize-callable", "multi_hot", "count", "tf_idf", "ngrams", "split-None", "ragged", "no-length",
        "maxlen-differs"])
def test_text_vectorization_refusals_name_the_problem(kwargs, maxlen, message):
    config, vocabulary = layer_config(**kwargs)
    with pytest.raises(PreprocessingError, match=re.escape(message)):
        from_text_vectorization(config, vocabulary, maxlen=maxlen)


def test_text_vectorization_without_a_length_takes_the_models():
    config, vocabulary = layer_config()
    assert from_text_vectorization(config, vocabulary, maxlen=9).maxlen == 9


def fitted_tokenizer_json(**kwargs) -> dict:
    keras_tok = keras_text.Tokenizer(**kwargs)
    keras_tok.fit_on_texts(["the movie was good", "the end"])
    return json.loads(keras_tok.to_json())


def test_keras_tokenizer_refusals_name_the_problem():
    with pytest.raises(PreprocessingError, match="no word_index: was fit_on_texts called"):
        from_keras_tokenizer(keras_text.Tokenizer().to_json(), maxlen=5)  # never fitted
    data = fitted_tokenizer_json()
    del data["config"]["word_index"]
    with pytest.raises(PreprocessingError, match="no word_index"):
        from_keras_tokenizer(data, maxlen=5)
    data = fitted_tokenizer_json(oov_token="<OOV>")
    data["config"]["oov_token"] = "<UNK>"
    with pytest.raises(PreprocessingError, match="oov_token '<UNK>' is not in its word_index"):
        from_keras_tokenizer(json.dumps(data), maxlen=5)
    layer = keras.layers.TextVectorization(vocabulary=["the"], output_sequence_length=5)
    for not_a_tokenizer in (json.dumps(layer.get_config()), keras.Sequential([keras.Input((3,))]).to_json(),
                            "[1, 2]", {"class_name": "Tokenizer"}):
        with pytest.raises(PreprocessingError, match="not a Keras Tokenizer JSON"):
            from_keras_tokenizer(not_a_tokenizer, maxlen=5)


# The service ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def service(tmp_path_factory):
    models = tmp_path_factory.mktemp("surrogate") / "models"
    shutil.copytree(BUNDLED_MODELS / "imdb-lstm-small", models / "imdb-lstm-small")
    with in_process(models) as client:
        wait_ready(client)
        yield client


@pytest.mark.parametrize("path,body", [
    ("/v1/models/imdb-lstm-small/predict", b'{"texts": ["a \\ud800 b"]}'),
    ("/v1/models/imdb-lstm-small/predict", b'{"texts": ["a \\udc00"]}'),
    ("/v2/models/imdb-lstm-small/infer",
     b'{"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["a \\ud800 b"]}]}'),
], ids=["v1-lead", "v1-trail", "v2"])
def test_a_lone_surrogate_in_a_json_body_is_a_bad_request(service, path, body):
    """JSON may escape a lone surrogate; no UTF-8 text can hold one, so the parsers refuse the body."""
    r = service.post(path, content=body, headers={"content-type": "application/json"})
    assert r.status_code == 400 and "not valid JSON" in r.text, r.text
    pair = service.post("/v1/models/imdb-lstm-small/predict", content=b'{"texts": ["a \\ud83d\\ude00 b"]}',
                        headers={"content-type": "application/json"})
    assert pair.status_code == 200 and pair.json()["predictions"][0]["tokens"]["kept"] == 3  # an escaped pair is fine


def test_nul_characters_get_vocabulary_loses_are_restored_or_refused():
    """get_vocabulary() drops tokens' trailing NULs (numpy strings): a character token "" was "\\x00"; a word's
    cannot be known."""
    chars = keras.layers.TextVectorization(split="character", output_sequence_length=6)
    chars.adapt(["a\x00b", "\x00a"])
    assert "" in chars.get_vocabulary()[2:]
    spec = from_text_vectorization(chars.get_config(), chars.get_vocabulary())
    for tok in (Tokenizer(spec), Tokenizer(spec, fast=False)):
        assert tok(["\x00ab\x00c"])[0].tolist() == np.asarray(chars(["\x00ab\x00c"])).tolist()
    words = keras.layers.TextVectorization(output_sequence_length=6)
    words.adapt(["a \x00 b", "a b"])
    with pytest.raises(PreprocessingError, match=r"empty tokens \(ids \[4\]\): get_vocabulary\(\) drops trailing NUL"):
        from_text_vectorization(words.get_config(), words.get_vocabulary())
    words.adapt(["ab ab\x00 ab\x00 b"])
    with pytest.raises(PreprocessingError, match="repeated tokens \\['ab'\\]"):
        from_text_vectorization(words.get_config(), words.get_vocabulary())


def test_an_oov_token_that_is_also_a_word_keeps_keras_ids():
    keras_tok = keras_text.Tokenizer(oov_token="unk")
    keras_tok.fit_on_texts(["unk a a b"])
    assert 1 not in keras_tok.word_index.values()  # rank 1 replaced by the word's own rank
    spec = from_keras_tokenizer(keras_tok.to_json(), maxlen=5)
    assert Tokenizer(spec).encode("unk a zz b")[0] == keras_tok.texts_to_sequences(["unk a zz b"])[0] == [3, 2, 3, 4]


def test_spans_where_deleting_and_a_longer_split_keep_the_length():
    """strip deletes "'" and "!" becomes "--": "a'b!c" and "ab--c" have the same length, not the same places."""
    spec = TokenizerSpec(words=["ab", "c"], filters="!", split="--", strip="'", start_char=None)
    assert Tokenizer(spec).word_spans("a'b!c") == [("ab", 0, 3), ("c", 4, 5)]
    assert Tokenizer(spec).encode_spans("A'B!!c'") == ([4, 5], 0, [(0, 3), (5, 6)])  # ranks + index_from 3


# PyTorch notebooks' own tokenizers and Hugging Face's (training/vocabularies.py) -----------------------------

PUNCTUATION_TO_SPACE = str.maketrans(string.punctuation, " " * len(string.punctuation))
PUNCTUATION_DELETED = str.maketrans("", "", string.punctuation)
# (what the notebook writes: text -> tokens, the flags that say it)
PYTORCH_RULES = {
    "lower-split": (lambda t: t.lower().split(), dict()),
    "findall-w": (lambda t: re.findall(r"\w+", t.lower()), dict(token_pattern=r"\w+")),
    "space-split-cased": (lambda t: t.translate(PUNCTUATION_TO_SPACE).split(), dict(lower=False, punctuation="space")),
    "delete-sklearn": (lambda t: re.findall(r"(?u)\b\w\w+\b", t.lower().translate(PUNCTUATION_DELETED)),
                       dict(punctuation="delete", token_pattern=r"(?u)\b\w\w+\b")),
    "space-apostrophes": (lambda t: re.findall(r"[\w']+", t.lower().translate(PUNCTUATION_TO_SPACE)),
                          dict(punctuation="space", token_pattern=r"[\w']+")),
}


def pytorch_notebook(fit: list[str], tokenize, maxlen: int = 64):
    """A notebook's vocabulary (torchtext's order: <unk> 0, <pad> 1, <bos> 2, <eos> 3, then by count) and its
    encode: ([<bos>] + ids + [<eos>])[:maxlen], padded at the end with <pad>."""
    counts = Counter(token for text in fit for token in tokenize(text))
    vocab = {"<unk>": 0, "<pad>": 1, "<bos>": 2, "<eos>": 3}
    for token, _ in counts.most_common(20000):
        vocab.setdefault(token, len(vocab))

    def encode(texts):
        rows = [([2] + [vocab.get(token, 0) for token in tokenize(text)] + [3])[:maxlen] for text in texts]
        return np.array([row + [1] * (maxlen - len(row)) for row in rows], dtype=np.int64)

    return vocab, encode


def pytorch_spec(tmp_path, vocab: dict, flags: dict, maxlen: int = 64) -> TokenizerSpec:
    from rnnserve.training.importer import Preprocessing
    from rnnserve.training.vocabularies import vocab_spec

    path = tmp_path / "vocab.json"
    path.write_text(json.dumps(vocab), encoding="utf-8")
    return vocab_spec(Preprocessing(vocab_file=path, maxlen=maxlen, padding="post", truncating="post",
                                    unknown_token="<unk>", pad_token="<pad>", start_token="<bos>",
                                    end_token="<eos>", **flags))


@pytest.mark.parametrize("dataset", ["imdb", "reuters"])
@pytest.mark.parametrize("rules", list(PYTORCH_RULES))
def test_pytorch_tokenizers_on_the_raw_training_texts(corpora, tmp_path, dataset, rules):
    tokenize, flags = PYTORCH_RULES[rules]
    fit, texts = texts_of(corpora, dataset, FULL)
    vocab, encode = pytorch_notebook(fit, tokenize)
    spec = pytorch_spec(tmp_path, vocab, flags)
    assert_ours_equal(spec, texts, encode(texts), compiled_fits="token_pattern" not in flags)


@PROPERTY
@given(batch=ANY_TEXTS)
def test_pytorch_tokenizers_on_arbitrary_unicode(batch):
    """Pure Python on both sides, so lone surrogates are compared too."""
    for rules in PYTORCH_RULES:
        encode, tokenizers = pytorch_tokenizers(rules)
        for tok in tokenizers:
            assert tok(batch)[0].tolist() == encode(batch).tolist(), (rules, tok.implementation)


@cache
def pytorch_tokenizers(rules: str):
    """The notebook's encode fitted on CORPUS, and our tokenizers for it (compiled where it fits, reference)."""
    vocab, encode = pytorch_notebook(CORPUS * 2, PYTORCH_RULES[rules][0])
    with tempfile.TemporaryDirectory() as tmp:
        spec = pytorch_spec(Path(tmp), vocab, PYTORCH_RULES[rules][1])
    return encode, [Tokenizer(spec), Tokenizer(spec, fast=False)]


@cache
def hugging_face(lower: bool):
    """A WordLevel tokenizer fitted on CORPUS (WhitespaceSplit, Lowercase or not, [CLS] $A [SEP], padded to 64) and
    our tokenizer for it."""
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers import normalizers, pre_tokenizers, processors, trainers

    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(unk_token="[UNK]"))
    if lower:
        tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.train_from_iterator(CORPUS * 2, trainers.WordLevelTrainer(special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]"]))
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2),
                                                                                             ("[SEP]", 3)])
    tok.enable_padding(pad_id=0, pad_token="[PAD]", length=64)
    with tempfile.TemporaryDirectory() as tmp:
        return tok, Tokenizer(hugging_face_spec(Path(tmp), tok))


def word_level_tokenizer(texts: list[str], vocab_size: int = 3000, length: int = 48):
    """A Hugging Face WordLevel tokenizer as its quick tour trains one, with Lowercase and WhitespaceSplit,
    [CLS] text [SEP], padded to `length` with [PAD]."""
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers import normalizers, pre_tokenizers, processors, trainers

    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.train_from_iterator(texts, trainers.WordLevelTrainer(vocab_size=vocab_size,
                                                             special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]"]))
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2),
                                                                                             ("[SEP]", 3)])
    tok.enable_padding(pad_id=0, pad_token="[PAD]", length=length)
    return tok


def hugging_face_spec(tmp_path, tok) -> TokenizerSpec:
    from rnnserve.training.importer import Preprocessing
    from rnnserve.training.vocabularies import hf_tokenizer_spec

    tok.save(str(tmp_path / "tokenizer.json"))
    return hf_tokenizer_spec(tmp_path / "tokenizer.json", Preprocessing(truncating="post"))


def library_ids(tok, texts: list[str]) -> np.ndarray:
    return np.array([e.ids[:64] for e in tok.encode_batch(texts)], dtype=np.int64)


@pytest.mark.parametrize("dataset", ["imdb", "reuters"])
def test_a_hugging_face_word_level_tokenizer_on_the_raw_training_texts(corpora, tmp_path, dataset):
    fit, texts = texts_of(corpora, dataset, FULL)
    tok = word_level_tokenizer(fit, vocab_size=20000, length=64)
    spec = hugging_face_spec(tmp_path, tok)
    assert_ours_equal(spec, texts, library_ids(tok, texts), compiled_fits=False)


SPECIAL_PIECES = ["[CLS]", "[SEP]", "[PAD]", "[UNK]", "[pad]", "[CLS][SEP]", "x[PAD]y"]
HF_TEXTS = st.lists(st.lists(st.one_of(st.sampled_from(PIECES), st.sampled_from(SPECIAL),
                                       st.sampled_from(SPECIAL_PIECES),
                                       st.characters(codec="utf-8", exclude_categories=("Cs",)),
                                       st.sampled_from([chr(c) for c in (0x1C89, 0xA7CB, 0x10D50, 0x16EA0)])),
                             max_size=16).map("".join), min_size=1, max_size=5)


@PROPERTY
@given(batch=HF_TEXTS)
def test_hugging_face_tokenizers_on_arbitrary_unicode(batch):
    """Added tokens anywhere in the text, characters newer than this Python's Unicode (U+1C89, U+A7CB, ...)."""
    for lower in (True, False):
        tok, ours = hugging_face(lower)
        assert ours.implementation == "python"
        assert ours(batch)[0].tolist() == library_ids(tok, batch).tolist(), lower
