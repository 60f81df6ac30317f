"""Users' own Keras text preprocessing -> the one tokenizer spec (service/core/tokenizer.py), for imports.

Pure Python: the files are read as JSON and configs as dicts, so nothing here imports TensorFlow. Each mapping
reproduces the ids of the user's pipeline exactly or refuses with the reason (PreprocessingError); the import's
parity gate (training/importer.py) then checks it on the user's texts against the pipeline itself.

- `keras.preprocessing.text.Tokenizer` (Keras 2, tf-keras): `tokenizer.to_json()` + `pad_sequences` options.
  Source: tf_keras/src/preprocessing/text.py (`text_to_word_sequence`, `texts_to_sequences_generator`).
- `keras.layers.TextVectorization` (Keras 3): its config and vocabulary (`get_vocabulary()`). Source:
  keras/src/layers/preprocessing/text_vectorization.py (`_preprocess`). Measured with TensorFlow 2.21, not
  assumed: `tf.strings.lower` lowers ASCII letters only ("ÀÉİΣ" stay); `tf.strings.split` splits on runs of
  the six ASCII spaces " \\t\\n\\v\\f\\r" only (U+00A0, U+2000..U+200A, U+3000, U+0085, U+001C..U+001F do not
  split); `unicode_split` yields code points (a combining mark is a token of its own).
"""

from __future__ import annotations

import json
import string
from collections import Counter

from rnnserve.service.core.tokenizer import TokenizerSpec, word_index_to_words

# tf.strings.split(sep=None) splits on these (absl::ascii_isspace), measured above.
TF_WHITESPACE = " \t\n\x0b\x0c\r"
# TextVectorization's strip regex r'[!"#$%&()\*\+,-\./:;<=>?@\[\\\]^_`{|}~\']': the 32 ASCII punctuation marks.
TF_PUNCTUATION = string.punctuation
TV_STANDARDIZE = ("lower_and_strip_punctuation", "lower", "strip_punctuation", None)
TV_SPLIT = ("whitespace", "character")
TV_RESERVED = ["", "[UNK]"]  # get_vocabulary()[:2]: the mask token (id 0) and the one OOV token (id 1)


class PreprocessingError(ValueError):
    """The user's preprocessing cannot be reproduced exactly; the message says what and what is supported."""


def from_keras_tokenizer(tokenizer_json: str | dict, maxlen: int, padding: str = "pre",
                         truncating: str = "pre") -> TokenizerSpec:
    """`Tokenizer.to_json()` (a JSON string, or its parsed dict) and the `pad_sequences` options -> spec.

    Ids are the Tokenizer's word_index ranks (the oov_token, when set, is rank 1); words ranked at or past
    num_words become the oov_token's id, or vanish without one, as `texts_to_sequences` does; unknown words
    likewise. Lower-casing is Python's str.lower(); char_level makes every character a token (filters then do
    not apply). A custom `analyzer` is not serialized by Keras and cannot be detected: the gate catches it."""
    data = json.loads(tokenizer_json) if isinstance(tokenizer_json, str) else tokenizer_json
    if not isinstance(data, dict) or data.get("class_name") != "Tokenizer" or "config" not in data:
        raise PreprocessingError("not a Keras Tokenizer JSON: expected tokenizer.to_json()'s "
                                 '{"class_name": "Tokenizer", "config": {...}}')
    config = data["config"]
    word_index = config.get("word_index")
    word_index = json.loads(word_index) if isinstance(word_index, str) else word_index
    if not isinstance(word_index, dict) or not word_index:
        raise PreprocessingError("the Tokenizer JSON has no word_index: was fit_on_texts called before to_json()?")
    oov_token = config.get("oov_token")
    if oov_token is not None and oov_token in word_index and "" not in word_index and 1 not in word_index.values():
        # fit_on_texts met the oov_token as a word too: its second rank replaced its first, and rank 1 is
        # never emitted. "" holds the place: no text splits into an empty word.
        word_index = {"": 1, **word_index}
    try:
        words = word_index_to_words(word_index)
    except ValueError as exc:
        raise PreprocessingError(f"the Tokenizer's {exc}") from None
    oov_char = None
    if oov_token is not None:
        if word_index.get(oov_token) is None:
            raise PreprocessingError(f"the Tokenizer's oov_token {oov_token!r} is not in its word_index")
        oov_char = word_index[oov_token]
    split = config.get("split", " ")
    if not split:
        raise PreprocessingError("the Tokenizer's split is empty (Python's str.split refuses it too)")
    return _checked(TokenizerSpec(
        words=words, char_level=bool(config.get("char_level", False)), lower=bool(config.get("lower", True)),
        filters=config.get("filters") or "", split=split, lower_ascii_only=False,
        unknown_words="drop" if oov_char is None else "oov", start_char=None, oov_char=oov_char, index_from=0,
        num_words=config.get("num_words") or None, maxlen=maxlen, padding=padding, truncating=truncating))


def from_text_vectorization(config: dict, vocabulary: list[str], maxlen: int | None = None) -> TokenizerSpec:
    """A `TextVectorization` layer's `get_config()` and `get_vocabulary()` -> spec.

    Ids: 0 the mask (padding), 1 the OOV token, then the vocabulary in order; padded and truncated at the
    end to output_sequence_length (or maxlen when the layer has none: the notebook then padded each batch to
    its longest text, which a server cannot reproduce, so the length must be given)."""
    standardize, split = config.get("standardize"), config.get("split")
    if standardize not in TV_STANDARDIZE:
        raise PreprocessingError(f"TextVectorization standardize={_name(standardize)} is a custom function, which "
                                 f"cannot be reproduced outside TensorFlow; supported: {_options(TV_STANDARDIZE)}")
    if split is None:  # measured: [N] ids, and output_sequence_length then cuts the batch axis
        raise PreprocessingError("TextVectorization split=None gives one id per text, no sequence for a "
                                 f"recurrent layer; supported: {_options(TV_SPLIT)}")
    if split not in TV_SPLIT:
        raise PreprocessingError(f"TextVectorization split={_name(split)} is a custom function; supported: "
                                 f"{_options(TV_SPLIT)}")
    if config.get("output_mode", "int") != "int":
        raise PreprocessingError(f"TextVectorization output_mode={config['output_mode']!r} gives one vector per "
                                 "text (a bag of words), no sequence for a recurrent layer; only 'int' is supported")
    if config.get("ngrams") is not None:
        raise PreprocessingError(f"TextVectorization ngrams={config['ngrams']!r} is not supported (ngrams=None)")
    if config.get("ragged"):
        raise PreprocessingError("TextVectorization ragged=True gives no fixed-length ids; use "
                                 "output_sequence_length")
    vocabulary = [str(w) for w in vocabulary]
    if vocabulary[:2] != TV_RESERVED:
        raise PreprocessingError(f"the vocabulary must start with the mask and OOV tokens {TV_RESERVED} "
                                 "(TextVectorization.get_vocabulary()); got "
                                 f"{vocabulary[:2]!r}")
    words = vocabulary[2:]
    # get_vocabulary() passes the tokens through a numpy str array, which drops trailing NUL characters:
    # measured, a "\x00" token comes back as "" and "word\x00" as "word" (the layer itself keeps the bytes).
    # A character token is one code point, so "" can only have been "\x00"; a word cannot be recovered.
    if split == "character":
        words = [w or "\x00" for w in words]
    empty = [i + 2 for i, w in enumerate(words) if not w]
    repeated = sorted(w for w, n in Counter(words).items() if n > 1 and w)
    if empty or repeated:
        found = f"empty tokens (ids {empty[:5]})" if empty else f"repeated tokens {repeated[:5]!r}"
        raise PreprocessingError(
            f"the vocabulary has {found}: get_vocabulary() drops trailing NUL characters (\\x00) from tokens, so "
            "the layer's own tokens cannot be known; remove NUL characters from the texts before adapt()")
    length = config.get("output_sequence_length") or maxlen
    if not length:
        raise PreprocessingError("TextVectorization has no output_sequence_length: give the model's input "
                                 "length (--maxlen)")
    if maxlen and config.get("output_sequence_length") and maxlen != config["output_sequence_length"]:
        raise PreprocessingError(f"--maxlen {maxlen} differs from the layer's output_sequence_length "
                                 f"{config['output_sequence_length']}")
    lower = standardize in ("lower", "lower_and_strip_punctuation")
    strip = TF_PUNCTUATION if standardize in ("strip_punctuation", "lower_and_strip_punctuation") else ""
    return _checked(TokenizerSpec(
        words=words, char_level=split == "character", lower=lower, lower_ascii_only=True,
        filters=TF_WHITESPACE if split == "whitespace" else "",
        strip=strip, unknown_words="oov", start_char=None, oov_char=1, index_from=1, maxlen=length,
        padding="post", truncating="post"))


def _checked(spec: TokenizerSpec) -> TokenizerSpec:
    try:
        spec.validate()
    except ValueError as exc:
        raise PreprocessingError(str(exc)) from None
    return spec


def _name(value) -> str:
    return repr(value) if value is None or isinstance(value, str) else repr(getattr(value, "__name__", value))


def _options(values) -> str:
    return ", ".join(repr(v) for v in values)
