"""Tutorial notebooks reproduced the way they are written (Keras 3 APIs), small enough to train in seconds.

Each notebook function trains one epoch on a few hundred examples with a fixed seed, saves what the notebook
saves, and returns a Notebook: the saved files, raw texts, and what the notebook's own pipeline predicts on
those texts (the reference `rnnserve-train import` must match). The last functions build small untrained
fixtures that import must refuse. Every function writes into its own folder under `tmp`, so several can share
one `tmp`, and starts with keras.backend.clear_session(), as a fresh kernel would: the saved layer names
("embedding", "lstm", "dense_1", ...) do not depend on what ran before in the process.

The Keras datasets are read from the local data directory as keras.datasets.{imdb,reuters}.load_data would
read them (shuffle with seed 113, start_char 1, index_from 3, oov_char 2 for ids >= num_words, maxlen keeps
sequences strictly shorter than maxlen); see shared/data/SOURCES.md and training/data.py.
"""

from __future__ import annotations

import csv
import gzip
import json
import re
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import keras
import numpy as np

from rnnserve.training.data import REUTERS_LABELS, imdb_raw_train_in_keras_order

SEED = 1234
KERAS_DATASET_SEED = 113
IMDB_LABELS = ["negative", "positive"]

# Written by hand: typographic quotes, dashes, ellipses, accents, other scripts' letters, emoji, HTML breaks.
HANDWRITTEN_REVIEWS = [
    "An “instant classic” — I loved every minute of it!",
    "Terrible. Just terrible… I want my two hours back.",
    "The café scenes were gorgeous; the naïve hero’s arc was très touching.",
    "Worst film of the year 😡😡",
    "Brilliant 👍 would watch again!!!",
    "It’s not ‘bad’, it’s just… boring.",
    "Zoë Saldaña is superb – highly recommended.",
    "DON'T WATCH THIS MOVIE. Awful acting, awful script.",
    "A masterpiece: moving, funny, and beautifully shot.",
    "Meh. 3/10 — the plot made no sense at all.",
    "Ce film est magnifique, vraiment génial.",
    "Das war der langweiligste Film überhaupt. ÜBERHAUPT!",
    "Great cast, great story, great ending.<br /><br />Go see it.",
    "I laughed, I cried ❤️ best movie ever",
    "The acting was fine, the dialogue “clunky”, the effects – cheap.",
    "ÉPIC failure. Ｆｕｌｌｗｉｄｔｈ letters and 日本語 too.",
]


@dataclass
class Notebook:
    model: Path  # the saved model file (.keras or .h5) or directory
    texts: list[str]  # raw texts to predict on
    probabilities: np.ndarray  # float [len(texts), C]: the notebook's own pipeline on `texts`
    labels: list[str]  # class names in output order
    maxlen: int
    tokenizer_json: Path | None = None  # tokenizer.to_json() written to a file
    vectorizer: Path | None = None  # a TextVectorization saved beside the model (JSON: config + vocabulary)
    ids: np.ndarray | None = None  # the ids the notebook fed the model for `texts` (int64 [N, maxlen])
    extra: dict = field(default_factory=dict)


# The worked notebooks of docs/own-model.md, which the tests run as written
DOC = Path(__file__).resolve().parents[2] / "docs" / "own-model.md"


def doc_blocks(section: str) -> dict[str, list[str]]:
    """The fenced code blocks of a section of the page, by language."""
    text = DOC.read_text(encoding="utf-8")
    body = text.split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    blocks: dict[str, list[str]] = {}
    for language, code in re.findall(r"```(\w+)\n(.*?)```", body, flags=re.S):
        blocks.setdefault(language, []).append(code)
    return blocks


def write_reviews(path, texts, labels) -> None:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["text", "label"])
        writer.writerows(zip(texts, [int(y) for y in labels]))


def _folder(tmp: Path, name: str) -> Path:
    folder = Path(tmp) / name
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _widen(p: np.ndarray) -> np.ndarray:
    """A sigmoid head's p [N, 1] as two classes [1 - p, p]."""
    p = np.asarray(p, dtype=np.float32).reshape(-1, 1)
    return np.concatenate([1 - p, p], axis=1)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-np.asarray(z, dtype=np.float64)))


def _softmax(z: np.ndarray) -> np.ndarray:
    z = np.asarray(z, dtype=np.float64)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


# ---------------------------------------------------------------------------------------------------------
# Data, as the tutorials load it


@cache  # small results only: the whole arrays and reviews are a few hundred MB as Python objects
def imdb_load_data(data_dir: Path, num_words: int = 10000, count: int = 2000):
    """The first `count` rows of keras.datasets.imdb.load_data(num_words=num_words)'s training split:
    (x_train, y_train, raw_texts), the raw review behind each row (the reconstructed npz's ranks, so the ids
    are Keras's even where a tokenizer would differ)."""
    with np.load(Path(data_dir) / "imdb_reconstructed.npz", allow_pickle=True) as f:
        x, y = f["x_train"], f["y_train"]
    raw, _ = imdb_raw_train_in_keras_order(data_dir)
    indices = np.arange(len(x))
    np.random.RandomState(KERAS_DATASET_SEED).shuffle(indices)  # the train split is shuffled first
    indices = indices[:count]
    x_train = [[1] + [w + 3 for w in x[i]] for i in indices]  # start_char=1, index_from=3
    x_train = [[w if w < num_words else 2 for w in seq] for seq in x_train]  # oov_char=2
    return x_train, y[indices], [raw[i] for i in indices]


def _imdb_held_out(raw: list[str], start: int, n_unicode: int = 16, n: int = 64) -> list[int]:
    """Rows from `start` on: the first n_unicode reviews with a non-ASCII character, then plain ones up to n."""
    rows = [i for i in range(start, len(raw)) if any(ord(c) > 127 for c in raw[i])][:n_unicode]
    rows += [i for i in range(start, len(raw)) if i not in rows][: n - len(rows)]
    return sorted(rows)


@cache
def _imdb_sample(data_dir: Path, n: int = 448) -> tuple[list[str], np.ndarray]:
    """A seeded random sample of raw IMDB training reviews: the users' "own data" notebooks start from it."""
    raw, labels = imdb_raw_train_in_keras_order(data_dir)
    rows = np.random.RandomState(0).permutation(len(raw))[:n]
    return [raw[i] for i in rows], labels[rows]


def _own_data_texts(data_dir: Path, n_train: int = 400) -> tuple[list[str], np.ndarray, list[str]]:
    """(train texts, train labels, texts to predict on: 48 held-out reviews and the hand-written ones)."""
    texts, labels = _imdb_sample(Path(data_dir))
    return texts[:n_train], labels[:n_train], texts[n_train:] + HANDWRITTEN_REVIEWS


# ---------------------------------------------------------------------------------------------------------
# 1-2. The IMDB tutorial


def imdb_simple_rnn(tmp: Path, data_dir: Path, fmt: str = "keras") -> Notebook:
    """The IMDB SimpleRNN tutorial: imdb.load_data(num_words=10000), pad_sequences(maxlen=200),
    Embedding -> SimpleRNN -> Dense(relu) -> Dense(sigmoid), saved as imdb_rnn.keras (or legacy imdb_rnn.h5)."""
    folder = _folder(tmp, f"imdb_simple_rnn_{fmt}")
    keras.backend.clear_session()
    keras.utils.set_random_seed(SEED)
    x_train, y_train, raw = imdb_load_data(Path(data_dir), num_words=10000)
    x = keras.utils.pad_sequences(x_train[:300], maxlen=200)
    y = y_train[:300]

    model = keras.Sequential([
        keras.layers.Embedding(10000, 32),
        keras.layers.SimpleRNN(32),
        keras.layers.Dense(32, activation="relu"),
        keras.layers.Dense(1, activation="sigmoid"),
    ])
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=0.01), loss="binary_crossentropy", metrics=["accuracy"])
    model.fit(x, y, epochs=1, batch_size=32, verbose=0)
    path = folder / f"imdb_rnn.{fmt}"
    model.save(path)

    rows = _imdb_held_out(raw, start=300)
    ids = keras.utils.pad_sequences([x_train[i] for i in rows], maxlen=200).astype(np.int64)
    return Notebook(
        model=path,
        texts=[raw[i] for i in rows],
        probabilities=_widen(model.predict(ids, verbose=0)),
        labels=IMDB_LABELS,
        maxlen=200,
        ids=ids,
        extra={"num_words": 10000, "padding": "pre", "truncating": "pre"},
    )


def keras2_conv_gru(tmp: Path, data_dir: Path, fmt: str = "h5") -> Notebook:
    """A Keras 2 (tf.keras, here tf-keras) notebook: imdb.load_data(num_words=10000), pad_sequences(maxlen=200),
    Embedding(input_length=200) -> Conv1D -> MaxPooling1D -> GRU(reset_after=False, Keras 2.2's default) ->
    Dense(sigmoid), saved as imdb_conv_gru.h5 or as a SavedModel directory (fmt="savedmodel"): files Keras 3
    cannot read as models."""
    import tf_keras

    folder = _folder(tmp, f"keras2_conv_gru_{fmt}")
    tf_keras.backend.clear_session()
    tf_keras.utils.set_random_seed(SEED)
    x_train, y_train, raw = imdb_load_data(Path(data_dir), num_words=10000)
    x = tf_keras.preprocessing.sequence.pad_sequences(x_train[:300], maxlen=200)
    model = tf_keras.Sequential([
        tf_keras.layers.Embedding(10000, 32, input_length=200),
        tf_keras.layers.Conv1D(32, 5, activation="relu"),
        tf_keras.layers.MaxPooling1D(4),
        tf_keras.layers.GRU(32, reset_after=False),
        tf_keras.layers.Dense(1, activation="sigmoid"),
    ])
    model.compile(optimizer=tf_keras.optimizers.Adam(learning_rate=0.01), loss="binary_crossentropy")
    model.fit(x, y_train[:300], epochs=1, batch_size=32, verbose=0)
    path = folder / ("imdb_conv_gru.h5" if fmt == "h5" else "imdb_conv_gru")
    model.save(path, save_format="h5" if fmt == "h5" else "tf")
    rows = _imdb_held_out(raw, start=300)
    ids = tf_keras.preprocessing.sequence.pad_sequences([x_train[i] for i in rows], maxlen=200).astype(np.int64)
    return Notebook(model=path, texts=[raw[i] for i in rows], probabilities=_widen(model.predict(ids, verbose=0)),
                    labels=IMDB_LABELS, maxlen=200, ids=ids, extra={"num_words": 10000})


def imdb_gru_logits(tmp: Path, data_dir: Path) -> Notebook:
    """The IMDB tutorial with a GRU and a logit head: Dense(1) trained with BinaryCrossentropy(from_logits=True);
    the notebook turns its predictions into probabilities with a sigmoid."""
    folder = _folder(tmp, "imdb_gru_logits")
    keras.backend.clear_session()
    keras.utils.set_random_seed(SEED)
    x_train, y_train, raw = imdb_load_data(Path(data_dir), num_words=10000)
    x = keras.utils.pad_sequences(x_train[:300], maxlen=200)
    y = y_train[:300]

    model = keras.Sequential([
        keras.layers.Embedding(10000, 32),
        keras.layers.GRU(32),
        keras.layers.Dense(1),
    ])
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=0.01),
                  loss=keras.losses.BinaryCrossentropy(from_logits=True), metrics=["accuracy"])
    model.fit(x, y, epochs=1, batch_size=32, verbose=0)
    path = folder / "imdb_gru.keras"
    model.save(path)

    rows = _imdb_held_out(raw, start=300)
    ids = keras.utils.pad_sequences([x_train[i] for i in rows], maxlen=200).astype(np.int64)
    logits = model.predict(ids, verbose=0)
    return Notebook(
        model=path,
        texts=[raw[i] for i in rows],
        probabilities=_widen(_sigmoid(logits)),
        labels=IMDB_LABELS,
        maxlen=200,
        ids=ids,
        extra={"output": "logits", "num_words": 10000, "padding": "pre", "truncating": "pre"},
    )


# ---------------------------------------------------------------------------------------------------------
# 3. Reuters


def reuters_load_data(data_dir: Path, num_words: int, maxlen: int, test_split: float):
    """keras.datasets.reuters.load_data(num_words=..., maxlen=..., test_split=...): shuffle (seed 113), then
    start_char/index_from, then drop sequences of maxlen or more, then the num_words cut, then the split.
    Returns (x_train, y_train), (x_test, y_test), and each test row's index in reuters.npz."""
    with np.load(Path(data_dir) / "reuters.npz", allow_pickle=True) as f:
        xs, labels = f["x"], f["y"]
    indices = np.arange(len(xs))
    np.random.RandomState(KERAS_DATASET_SEED).shuffle(indices)
    xs = [[1] + [w + 3 for w in xs[i]] for i in indices]
    keep = [k for k, x in enumerate(xs) if len(x) < maxlen]
    xs, labels, npz_rows = [xs[k] for k in keep], labels[indices][keep], indices[keep]
    xs = [[w if w < num_words else 2 for w in x] for x in xs]
    cut = int(len(xs) * (1 - test_split))
    return (xs[:cut], labels[:cut]), (xs[cut:], labels[cut:]), npz_rows[cut:]


def _reuters_raw_by_npz_row(data_dir: Path) -> dict[int, str]:
    """Raw text of each document of the default training split, by its row in reuters.npz."""
    with gzip.open(Path(data_dir) / "raw" / "reuters_train_raw.csv.gz", "rt", encoding="utf-8", newline="") as fh:
        return {int(r["npz_index"]): r["text"] for r in csv.DictReader(fh)}


def reuters_stacked_lstm(tmp: Path, data_dir: Path) -> Notebook:
    """The Reuters newswire tutorial: reuters.load_data(num_words=30000, maxlen=50, test_split=0.3),
    pad_sequences(maxlen=50, padding="post"), Embedding -> LSTM(return_sequences) -> LSTM -> Dense(46, softmax).

    texts: the raw documents of the test split that have raw text here (short ones, all under 50 ids), then
    longer documents that maxlen=50 filtered out (pad_sequences truncates them, keeping the last 50 ids), the
    one with a non-ASCII character among them."""
    folder = _folder(tmp, "reuters_stacked_lstm")
    keras.backend.clear_session()
    keras.utils.set_random_seed(SEED)
    (x_train, y_train), _, test_npz_rows = reuters_load_data(data_dir, num_words=30000, maxlen=50, test_split=0.3)
    x = keras.utils.pad_sequences(x_train[:300], maxlen=50, padding="post")
    y = y_train[:300]

    model = keras.Sequential([
        keras.layers.Embedding(30000, 64),
        keras.layers.LSTM(64, return_sequences=True),
        keras.layers.LSTM(64),
        keras.layers.Dense(46, activation="softmax"),
    ])
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=0.01), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    model.fit(x, y, epochs=1, batch_size=32, verbose=0)
    path = folder / "reuters_lstm.keras"
    model.save(path)

    raw = _reuters_raw_by_npz_row(data_dir)
    with np.load(Path(data_dir) / "reuters.npz", allow_pickle=True) as f:
        npz_x = f["x"]
    short = [int(r) for r in test_npz_rows if int(r) in raw][:48]
    non_ascii = [r for r, text in raw.items() if any(ord(c) > 127 for c in text)]
    long = non_ascii + [r for r in raw if len(npz_x[r]) + 1 >= 50 and r not in non_ascii][: 16 - len(non_ascii)]
    rows = short + long
    sequences = [[1] + [w + 3 if w + 3 < 30000 else 2 for w in npz_x[r]] for r in rows]
    ids = keras.utils.pad_sequences(sequences, maxlen=50, padding="post").astype(np.int64)
    return Notebook(
        model=path,
        texts=[raw[r] for r in rows],
        probabilities=np.asarray(model.predict(ids, verbose=0), dtype=np.float32),
        labels=list(REUTERS_LABELS),
        maxlen=50,
        ids=ids,
        extra={"num_words": 30000, "padding": "post", "truncating": "pre", "npz_rows": rows},
    )


# ---------------------------------------------------------------------------------------------------------
# 4, 6. The classic Tokenizer notebooks (tf_keras.preprocessing, as Keras 3 dropped it)


def tokenizer_csv_lstm(tmp: Path, data_dir: Path) -> Notebook:
    """Own data with the classic pipeline: a CSV of reviews, Tokenizer(num_words=5000, oov_token="<OOV>"),
    pad_sequences(maxlen=120, padding="post", truncating="post"), Embedding -> LSTM -> Dense(sigmoid);
    the model and tokenizer.to_json() saved."""
    import pandas as pd
    from tf_keras.preprocessing.sequence import pad_sequences
    from tf_keras.preprocessing.text import Tokenizer

    folder = _folder(tmp, "tokenizer_csv_lstm")
    keras.backend.clear_session()
    keras.utils.set_random_seed(SEED)
    train_texts, train_labels, texts = _own_data_texts(data_dir)
    csv_path = folder / "reviews.csv"
    with open(csv_path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["text", "label"])
        writer.writerows(zip(train_texts, train_labels.tolist()))

    df = pd.read_csv(csv_path)
    tokenizer = Tokenizer(num_words=5000, oov_token="<OOV>")
    tokenizer.fit_on_texts(df["text"])
    sequences = tokenizer.texts_to_sequences(df["text"])
    x = pad_sequences(sequences, maxlen=120, padding="post", truncating="post")
    y = df["label"].to_numpy()

    model = keras.Sequential([
        keras.layers.Embedding(5000, 32),
        keras.layers.LSTM(32),
        keras.layers.Dense(1, activation="sigmoid"),
    ])
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=0.01), loss="binary_crossentropy", metrics=["accuracy"])
    model.fit(x, y, epochs=1, batch_size=32, verbose=0)
    path = folder / "model.keras"
    model.save(path)
    tokenizer_path = folder / "tokenizer.json"
    tokenizer_path.write_text(tokenizer.to_json(), encoding="utf-8")

    ids = pad_sequences(tokenizer.texts_to_sequences(texts), maxlen=120, padding="post", truncating="post")
    ids = ids.astype(np.int64)
    return Notebook(
        model=path,
        texts=texts,
        probabilities=_widen(model.predict(ids, verbose=0)),
        labels=IMDB_LABELS,
        maxlen=120,
        tokenizer_json=tokenizer_path,
        ids=ids,
        extra={"padding": "post", "truncating": "post", "csv": csv_path},
    )


def bidirectional_masked_lstm(tmp: Path, data_dir: Path) -> Notebook:
    """The bidirectional LSTM notebook: Tokenizer(num_words=4000, oov_token="<OOV>"), pad_sequences(maxlen=100)
    (pre padding and truncating), Embedding(mask_zero=True) -> Bidirectional(LSTM) -> Dense(sigmoid)."""
    from tf_keras.preprocessing.sequence import pad_sequences
    from tf_keras.preprocessing.text import Tokenizer

    folder = _folder(tmp, "bidirectional_masked_lstm")
    keras.backend.clear_session()
    keras.utils.set_random_seed(SEED)
    train_texts, y, texts = _own_data_texts(data_dir)
    tokenizer = Tokenizer(num_words=4000, oov_token="<OOV>")
    tokenizer.fit_on_texts(train_texts)
    x = pad_sequences(tokenizer.texts_to_sequences(train_texts), maxlen=100)

    model = keras.Sequential([
        keras.layers.Embedding(4000, 32, mask_zero=True),
        keras.layers.Bidirectional(keras.layers.LSTM(16)),
        keras.layers.Dense(1, activation="sigmoid"),
    ])
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=0.01), loss="binary_crossentropy", metrics=["accuracy"])
    model.fit(x, y, epochs=1, batch_size=32, verbose=0)
    path = folder / "model.keras"
    model.save(path)
    tokenizer_path = folder / "tokenizer.json"
    tokenizer_path.write_text(tokenizer.to_json(), encoding="utf-8")

    ids = pad_sequences(tokenizer.texts_to_sequences(texts), maxlen=100).astype(np.int64)
    return Notebook(
        model=path,
        texts=texts,
        probabilities=_widen(model.predict(ids, verbose=0)),
        labels=IMDB_LABELS,
        maxlen=100,
        tokenizer_json=tokenizer_path,
        ids=ids,
        extra={"padding": "pre", "truncating": "pre", "mask_zero": True},
    )


# ---------------------------------------------------------------------------------------------------------
# 5. TextVectorization


def save_vectorizer_json(layer: keras.layers.TextVectorization, path: Path) -> Path:
    """{"config": layer.get_config(), "vocabulary": layer.get_vocabulary()} as JSON. The vocabulary holds numpy
    strings (made str); a Python standardize/split function in the config is written as its name."""
    config = dict(layer.get_config())
    for key in ("standardize", "split"):
        if callable(config.get(key)):
            config[key] = config[key].__name__
    vocabulary = [str(token) for token in layer.get_vocabulary()]
    path.write_text(json.dumps({"config": config, "vocabulary": vocabulary}, ensure_ascii=False), encoding="utf-8")
    return path


def text_vectorization_gru(tmp: Path, data_dir: Path, inside: bool = True,
                           line_separators: bool = False) -> Notebook:
    """The TextVectorization notebook: TextVectorization(max_tokens=8000, output_sequence_length=150) adapted on
    the training texts, Embedding -> GRU -> Dense(sigmoid).

    inside=True: the layer is the model's first layer, after keras.Input(shape=(1,), dtype="string"); the saved
    model takes raw strings, fed as a rank-1 string tensor (tf.constant(texts)), as tf.data batches them. (A
    [batch, 1] string tensor also works, but one model object traces only one of the two ranks: after the other,
    predict fails with "Cannot take the length of shape with unknown rank".)
    inside=False: the texts are vectorized before fit, and the layer is saved beside the model as
    vectorizer.json (config + vocabulary) and as vectorizer.keras (a Sequential holding only it).

    Keras saves the vocabulary in the .keras file one token a line and reads it back with str.splitlines(),
    which also breaks lines at U+0085 (NEL) and the other Unicode line separators. 3 of the 400 training reviews
    hold U+0085 (byte 0x85 is Windows-1252's ellipsis), which whitespace splitting leaves inside tokens
    ("ritchie" + U+0085), and the saved model then fails to load ("repeated term"). So the notebook trains on
    the 397 others; with line_separators=True it keeps them, and the .keras files it saves do not load back in
    Keras (extra["loads_back"] is False; vectorizer.json is unaffected)."""
    import tensorflow as tf

    folder = _folder(tmp, f"text_vectorization_gru_{'inside' if inside else 'beside'}"
                          f"{'_line_separators' if line_separators else ''}")
    keras.backend.clear_session()
    keras.utils.set_random_seed(SEED)
    train_texts, y, texts = _own_data_texts(data_dir)
    if not line_separators:
        keep = [i for i, text in enumerate(train_texts) if len(text.splitlines()) == 1]
        train_texts, y = [train_texts[i] for i in keep], y[keep]
    vectorize_layer = keras.layers.TextVectorization(max_tokens=8000, output_sequence_length=150)
    vectorize_layer.adapt(train_texts)

    classifier = [
        keras.layers.Embedding(8000, 32),
        keras.layers.GRU(32),
        keras.layers.Dense(1, activation="sigmoid"),
    ]
    extra: dict = {"loads_back": not line_separators}
    if inside:
        model = keras.Sequential([keras.Input(shape=(1,), dtype="string"), vectorize_layer, *classifier])
        model.compile(optimizer=keras.optimizers.Adam(learning_rate=0.01), loss="binary_crossentropy",
                      metrics=["accuracy"])
        # Strings go in as a rank-1 tensor, [batch], as tf.data batches them (see the docstring).
        model.fit(tf.constant(train_texts), y, epochs=1, batch_size=32, verbose=0)
        probabilities = model.predict(tf.constant(texts), verbose=0)
        vectorizer = None
    else:
        model = keras.Sequential(classifier)
        model.compile(optimizer=keras.optimizers.Adam(learning_rate=0.01), loss="binary_crossentropy",
                      metrics=["accuracy"])
        model.fit(vectorize_layer(train_texts), y, epochs=1, batch_size=32, verbose=0)
        probabilities = model.predict(vectorize_layer(texts), verbose=0)
        vectorizer = save_vectorizer_json(vectorize_layer, folder / "vectorizer.json")
        extra["vectorizer_keras"] = folder / "vectorizer.keras"
        keras.Sequential([keras.Input(shape=(1,), dtype="string"), vectorize_layer]).save(extra["vectorizer_keras"])
    path = folder / "model.keras"
    model.save(path)

    return Notebook(
        model=path,
        texts=texts,
        probabilities=_widen(probabilities),
        labels=IMDB_LABELS,
        maxlen=150,
        vectorizer=vectorizer,
        ids=np.asarray(vectorize_layer(texts), dtype=np.int64),
        extra=extra,
    )


# ---------------------------------------------------------------------------------------------------------
# 7. A PyTorch model exported to ONNX (built with onnx.helper: no PyTorch here)

# Line i of vocab.txt is id i: "<pad>" (0), "<unk>" (1), then these.
ONNX_WORDS = """
the a an and or but not no very really quite too so this that these those it its is was were be been are
film movie story plot script acting actor actress cast director scene scenes ending music score camera
character characters dialogue effects performance performances role roles show series episode book
good great fine nice best better brilliant superb excellent wonderful amazing beautiful lovely fun funny
moving touching clever smart strong solid fresh charming perfect enjoyable memorable powerful gripping
bad worse worst awful terrible boring dull poor weak stupid silly slow long lame bland messy cheap ugly
annoying predictable pointless forgettable painful tedious confusing flat
i you he she we they me my your his her our their who what when where why how all some any every
love loved like liked enjoy enjoyed hate hated watch watched see saw seen recommend waste wasted
laugh laughed cry cried fell sleep feel felt think thought know knew want wanted make made
time times year years minute minutes hour hours end start middle part moment moments way thing things
one two three ten first last again never ever always still just only even also much more most less
at in on of to for with without from by about after before during through over
""".split()

ONNX_TEXT_RULES = (
    "lower-case the text (str.lower), split on whitespace (str.split), each word to its line number in vocab.txt, "
    "a word not in it to 1 (<unk>); keep the first 20 ids (truncate post), pad post with 0 to 20"
)


def onnx_tokenize(texts: list[str], vocab: list[str], maxlen: int = 20) -> np.ndarray:
    """The PyTorch user's own tokenizer (ONNX_TEXT_RULES)."""
    index = {word: i for i, word in enumerate(vocab)}
    ids = np.zeros((len(texts), maxlen), dtype=np.int64)
    for row, text in enumerate(texts):
        words = [index.get(word, 1) for word in text.lower().split()][:maxlen]
        ids[row, : len(words)] = words
    return ids


def torch_lstm_classifier_forward(ids: np.ndarray, weights: dict[str, np.ndarray]) -> np.ndarray:
    """Net.forward in NumPy, with PyTorch's names and gate order (i, f, g, o): emb -> LSTM over every step
    (padding included, as the unpacked nn.LSTM does) -> fc on the last hidden state. Float64 throughout."""
    w = {name: value.astype(np.float64) for name, value in weights.items()}
    x = w["emb.weight"][ids]  # [N, T, E]
    hidden = w["lstm.weight_hh_l0"].shape[1]
    h = np.zeros((len(ids), hidden))
    c = np.zeros((len(ids), hidden))
    for t in range(ids.shape[1]):
        gates = x[:, t] @ w["lstm.weight_ih_l0"].T + w["lstm.bias_ih_l0"] + h @ w["lstm.weight_hh_l0"].T
        gates += w["lstm.bias_hh_l0"]
        i, f, g, o = np.split(gates, 4, axis=1)
        i, f, g, o = _sigmoid(i), _sigmoid(f), np.tanh(g), _sigmoid(o)
        c = f * c + i * g
        h = o * np.tanh(c)
    return h @ w["fc.weight"].T + w["fc.bias"]


def _torch_to_onnx_gates(w: np.ndarray) -> np.ndarray:
    """PyTorch's gate blocks (i, f, g, o) in ONNX's order (i, o, f, c)."""
    i, f, g, o = np.split(w, 4, axis=0)
    return np.concatenate([i, o, f, g], axis=0)


def _onnx_lstm_classifier(weights: dict[str, np.ndarray], dynamic_batch: bool):
    """The graph torch.onnx.export (opset 17) writes for Net: Gather -> Transpose [T, N, E] -> LSTM with zero
    initial states sized from the batch -> Y_h [1, N, H] -> Squeeze -> Gemm(transB=1)."""
    from onnx import TensorProto, helper, numpy_helper

    hidden = weights["lstm.weight_hh_l0"].shape[1]
    classes = weights["fc.weight"].shape[0]
    initializers = [
        numpy_helper.from_array(weights["emb.weight"], "emb.weight"),
        numpy_helper.from_array(_torch_to_onnx_gates(weights["lstm.weight_ih_l0"])[None], "onnx::LSTM_W"),
        numpy_helper.from_array(_torch_to_onnx_gates(weights["lstm.weight_hh_l0"])[None], "onnx::LSTM_R"),
        numpy_helper.from_array(np.concatenate([_torch_to_onnx_gates(weights["lstm.bias_ih_l0"]),
                                                _torch_to_onnx_gates(weights["lstm.bias_hh_l0"])])[None],
                                "onnx::LSTM_B"),
        numpy_helper.from_array(weights["fc.weight"], "fc.weight"),
        numpy_helper.from_array(weights["fc.bias"], "fc.bias"),
        numpy_helper.from_array(np.array(1, dtype=np.int64), "const_batch_axis"),  # after the transpose
        numpy_helper.from_array(np.array([0], dtype=np.int64), "const_axes_0"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "const_num_layers"),
        numpy_helper.from_array(np.array([hidden], dtype=np.int64), "const_hidden"),
    ]
    nodes = [
        helper.make_node("Gather", ["emb.weight", "input_ids"], ["/emb/Gather_output_0"], name="/emb/Gather"),
        helper.make_node("Transpose", ["/emb/Gather_output_0"], ["/lstm/Transpose_output_0"], perm=[1, 0, 2],
                         name="/lstm/Transpose"),
        helper.make_node("Shape", ["/lstm/Transpose_output_0"], ["/lstm/Shape_output_0"], name="/lstm/Shape"),
        helper.make_node("Gather", ["/lstm/Shape_output_0", "const_batch_axis"], ["/lstm/Gather_output_0"],
                         axis=0, name="/lstm/Gather"),
        helper.make_node("Unsqueeze", ["/lstm/Gather_output_0", "const_axes_0"], ["/lstm/Unsqueeze_output_0"],
                         name="/lstm/Unsqueeze"),
        helper.make_node("Concat", ["const_num_layers", "/lstm/Unsqueeze_output_0", "const_hidden"],
                         ["/lstm/Concat_output_0"], axis=0, name="/lstm/Concat"),
        helper.make_node("ConstantOfShape", ["/lstm/Concat_output_0"], ["/lstm/ConstantOfShape_output_0"],
                         value=numpy_helper.from_array(np.zeros(1, dtype=np.float32)), name="/lstm/ConstantOfShape"),
        helper.make_node("LSTM", ["/lstm/Transpose_output_0", "onnx::LSTM_W", "onnx::LSTM_R", "onnx::LSTM_B", "",
                                  "/lstm/ConstantOfShape_output_0", "/lstm/ConstantOfShape_output_0"],
                         ["/lstm/LSTM_output_0", "/lstm/LSTM_output_1", "/lstm/LSTM_output_2"],
                         hidden_size=hidden, name="/lstm/LSTM"),
        helper.make_node("Squeeze", ["/lstm/LSTM_output_1", "const_axes_0"], ["/Squeeze_output_0"], name="/Squeeze"),
        helper.make_node("Gemm", ["/Squeeze_output_0", "fc.weight", "fc.bias"], ["logits"], alpha=1.0, beta=1.0,
                         transB=1, name="/fc/Gemm"),
    ]
    batch = "batch" if dynamic_batch else 1
    graph = helper.make_graph(
        nodes, "main_graph",
        inputs=[helper.make_tensor_value_info("input_ids", TensorProto.INT64, [batch, "seq"])],
        outputs=[helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, classes])],
        initializer=initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="pytorch",
                              producer_version="2.1.0")
    model.ir_version = 8
    return model


def pytorch_style_onnx(tmp: Path, dynamic_batch: bool = True) -> Notebook:
    """A PyTorch notebook's export: nn.Embedding(V, 16, padding_idx=0) -> nn.LSTM(16, 24, batch_first=True) ->
    nn.Linear(24, 3) on h[-1], torch.onnx.export(..., input_names=["input_ids"], output_names=["logits"],
    dynamic_axes={"input_ids": {0: "batch", 1: "seq"}, "logits": {0: "batch"}}, opset_version=17), with
    random (seeded) weights in PyTorch's initialisation ranges. dynamic_batch=False: the batch dimension is 1
    (exported without dynamic_axes for the batch). The reference is the NumPy forward, not onnxruntime."""
    import onnx

    folder = _folder(tmp, f"pytorch_style_onnx_{'dynamic' if dynamic_batch else 'batch1'}")
    rng = np.random.default_rng(SEED)
    vocab = ["<pad>", "<unk>", *ONNX_WORDS]
    emb, hidden, classes = 16, 24, 3
    k = 1 / np.sqrt(hidden)
    weights = {
        "emb.weight": rng.normal(size=(len(vocab), emb)),
        "lstm.weight_ih_l0": rng.uniform(-k, k, (4 * hidden, emb)),
        "lstm.weight_hh_l0": rng.uniform(-k, k, (4 * hidden, hidden)),
        "lstm.bias_ih_l0": rng.uniform(-k, k, 4 * hidden),
        "lstm.bias_hh_l0": rng.uniform(-k, k, 4 * hidden),
        "fc.weight": rng.uniform(-k, k, (classes, hidden)),
        "fc.bias": rng.uniform(-k, k, classes),
    }
    weights = {name: value.astype(np.float32) for name, value in weights.items()}
    weights["emb.weight"][0] = 0  # padding_idx=0

    path = folder / "model.onnx"
    model = _onnx_lstm_classifier(weights, dynamic_batch)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, path)
    vocab_path = folder / "vocab.txt"
    vocab_path.write_text("\n".join(vocab) + "\n", encoding="utf-8")

    rng = np.random.default_rng(SEED + 1)
    texts = [" ".join(rng.choice(ONNX_WORDS, size=rng.integers(3, 26))) for _ in range(48)]
    texts += [
        "The movie was GREAT and the acting superb",
        "Worst. Film. Ever.",
        "i loved the music but the plot was a mess",
        "a truly unforgettable performance by the cast",
        "Café naïve résumé: the story is “fine”",
        "boring 😴 boring 😴 boring",
        "the the the the the the the the the the the the the the the the the the the the the the the",
        "zzz qqq xyzzy",
        "  the   film \t was \n fine  ",
        "ÉNORME and EXCELLENT",
        "it is not good it is not bad it is just long",
        "I think they wanted to make a funny film but it was painful and silly",
        "",
        "great",
        "terrible ending",
        "Über boring, the end",
    ]
    ids = onnx_tokenize(texts, vocab, maxlen=20)
    logits = torch_lstm_classifier_forward(ids, weights)
    return Notebook(
        model=path,
        texts=texts,
        probabilities=_softmax(logits).astype(np.float32),
        labels=["a", "b", "c"],
        maxlen=20,
        ids=ids,
        extra={"vocab": vocab_path, "rules": ONNX_TEXT_RULES, "logits": logits.astype(np.float32),
               "dynamic_batch": dynamic_batch, "output": "logits"},
    )


# ---------------------------------------------------------------------------------------------------------
# 8. Fixtures import must refuse (small and untrained)


def _short_texts(n: int = 50) -> list[str]:
    rng = np.random.default_rng(SEED + 2)
    texts = [" ".join(rng.choice(ONNX_WORDS, size=rng.integers(4, 15))) for _ in range(n - 4)]
    return texts + ["Café “quotes” — ok!", "BAD, bad; BAD…", "emoji 🎬 film", "the end."]


def unsupported_layer_model(tmp: Path) -> Notebook:
    """An attention notebook: Embedding -> LSTM(return_sequences=True) -> MultiHeadAttention (self-attention)
    -> LayerNormalization -> GlobalAveragePooling1D -> Dense(sigmoid), with a Tokenizer; import has no
    equivalent for the attention and normalization layers."""
    from tf_keras.preprocessing.sequence import pad_sequences
    from tf_keras.preprocessing.text import Tokenizer

    folder = _folder(tmp, "unsupported_layer_model")
    keras.backend.clear_session()
    keras.utils.set_random_seed(SEED)
    texts = _short_texts()
    tokenizer = Tokenizer(num_words=200, oov_token="<OOV>")
    tokenizer.fit_on_texts(texts)

    inputs = keras.Input(shape=(30,), dtype="int32")
    x = keras.layers.Embedding(200, 16)(inputs)
    x = keras.layers.LSTM(16, return_sequences=True)(x)
    x = keras.layers.MultiHeadAttention(num_heads=2, key_dim=8)(x, x)
    x = keras.layers.LayerNormalization()(x)
    x = keras.layers.GlobalAveragePooling1D()(x)
    outputs = keras.layers.Dense(1, activation="sigmoid")(x)
    model = keras.Model(inputs, outputs)
    path = folder / "model.keras"
    model.save(path)
    tokenizer_path = folder / "tokenizer.json"
    tokenizer_path.write_text(tokenizer.to_json(), encoding="utf-8")

    ids = pad_sequences(tokenizer.texts_to_sequences(texts), maxlen=30).astype(np.int64)
    return Notebook(model=path, texts=texts, probabilities=_widen(model.predict(ids, verbose=0)),
                    labels=IMDB_LABELS, maxlen=30, tokenizer_json=tokenizer_path, ids=ids)


def custom_standardize(text):
    """A user's own standardize function: lower-case, HTML line breaks to spaces."""
    import tensorflow as tf

    return tf.strings.regex_replace(tf.strings.lower(text), "<br />", " ")


def custom_standardize_vectorizer(tmp: Path) -> Notebook:
    """TextVectorization(standardize=custom_standardize) beside an Embedding -> GRU -> Dense model; its JSON
    config names the function ("custom_standardize"), whose code the JSON cannot carry."""
    folder = _folder(tmp, "custom_standardize_vectorizer")
    keras.backend.clear_session()
    keras.utils.set_random_seed(SEED)
    texts = _short_texts()
    vectorize_layer = keras.layers.TextVectorization(max_tokens=300, output_sequence_length=30,
                                                     standardize=custom_standardize)
    vectorize_layer.adapt(texts)
    model = keras.Sequential([keras.Input(shape=(30,), dtype="int64"), keras.layers.Embedding(300, 16),
                              keras.layers.GRU(16), keras.layers.Dense(1, activation="sigmoid")])
    path = folder / "model.keras"
    model.save(path)
    vectorizer = save_vectorizer_json(vectorize_layer, folder / "vectorizer.json")

    ids = np.asarray(vectorize_layer(texts), dtype=np.int64)
    return Notebook(model=path, texts=texts, probabilities=_widen(model.predict(ids, verbose=0)),
                    labels=IMDB_LABELS, maxlen=30, vectorizer=vectorizer, ids=ids)


def bag_of_words_vectorizer(tmp: Path) -> Notebook:
    """TextVectorization(output_mode="multi_hot") beside a Dense model: a bag of words, no sequence for an RNN.
    maxlen is not meaningful here; it is the vocabulary size, the width of what the model takes, and `ids` are
    the multi-hot rows."""
    folder = _folder(tmp, "bag_of_words_vectorizer")
    keras.backend.clear_session()
    keras.utils.set_random_seed(SEED)
    texts = _short_texts()
    vectorize_layer = keras.layers.TextVectorization(max_tokens=300, output_mode="multi_hot")
    vectorize_layer.adapt(texts)
    width = vectorize_layer.vocabulary_size()
    model = keras.Sequential([keras.Input(shape=(width,)), keras.layers.Dense(16, activation="relu"),
                              keras.layers.Dense(1, activation="sigmoid")])
    path = folder / "model.keras"
    model.save(path)
    vectorizer = save_vectorizer_json(vectorize_layer, folder / "vectorizer.json")

    multi_hot = np.asarray(vectorize_layer(texts))
    return Notebook(model=path, texts=texts, probabilities=_widen(model.predict(multi_hot, verbose=0)),
                    labels=IMDB_LABELS, maxlen=width, vectorizer=vectorizer, ids=multi_hot.astype(np.int64),
                    extra={"output_mode": "multi_hot"})


def oversized_tokenizer(tmp: Path) -> Notebook:
    """A Tokenizer fitted without num_words whose vocabulary is larger than the model's Embedding(input_dim=64):
    ids past 63 would index outside the embedding. The texts use only the 60 most frequent words, so the
    notebook's own pipeline still runs on them."""
    from tf_keras.preprocessing.sequence import pad_sequences
    from tf_keras.preprocessing.text import Tokenizer

    folder = _folder(tmp, "oversized_tokenizer")
    keras.backend.clear_session()
    keras.utils.set_random_seed(SEED)
    tokenizer = Tokenizer(oov_token="<OOV>")
    tokenizer.fit_on_texts(_short_texts())
    frequent = [word for word, i in tokenizer.word_index.items() if i < 60]
    rng = np.random.default_rng(SEED + 3)
    texts = [" ".join(rng.choice(frequent, size=rng.integers(3, 12))) for _ in range(50)]

    model = keras.Sequential([keras.Input(shape=(20,), dtype="int32"), keras.layers.Embedding(64, 8),
                              keras.layers.LSTM(8), keras.layers.Dense(1, activation="sigmoid")])
    path = folder / "model.keras"
    model.save(path)
    tokenizer_path = folder / "tokenizer.json"
    tokenizer_path.write_text(tokenizer.to_json(), encoding="utf-8")

    ids = pad_sequences(tokenizer.texts_to_sequences(texts), maxlen=20).astype(np.int64)
    return Notebook(model=path, texts=texts, probabilities=_widen(model.predict(ids, verbose=0)),
                    labels=IMDB_LABELS, maxlen=20, tokenizer_json=tokenizer_path, ids=ids,
                    extra={"vocabulary_size": len(tokenizer.word_index) + 1, "input_dim": 64})
