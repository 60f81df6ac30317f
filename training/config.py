"""One flat, typed training configuration; presets are small dicts of overrides (nanoGPT style)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Literal

from rnnserve.service.core.normalize import check_rules


class ConfigError(ValueError):
    """A configuration that cannot be trained; the message names the field."""


@dataclass
class TrainConfig:
    # What is trained: "text" classifies text; "sequences" maps numeric sequences [T, F] to a class or a value
    # (training/sequences.py); "lm" is a character language model over a text corpus (training/lm.py).
    task: Literal["text", "sequences", "lm"] = "text"
    # data
    # text: imdb, reuters, or a CSV/JSONL file of labelled text; sequences: waves-next, waves-kind, waves-steps
    # (synthetic) or a CSV/NPZ file; lm: a .txt file, or a CSV/JSONL file whose text_column is the corpus
    dataset: str = "imdb"
    text_column: str = "text"
    label_column: str = "label"
    char_level: bool = False  # own files only: characters are the tokens (Keras's Tokenizer(char_level=True))
    # The tokenizer's normalization rules (service/core/normalize.py), comma-separated, or "none"; default:
    # normalize.DEFAULT for your own files, none for the Keras datasets (their ids are Keras's rules alone)
    normalization: str | None = None
    features: int = 1  # sequences: values per step (F)
    regression: bool = False  # sequences: the target column holds numbers, not class names
    max_chars: int | None = None  # lm: train on the corpus's first max_chars characters only
    num_words: int | None = 10000  # vocabulary cut-off: rarer words become oov_char
    skip_top: int = 0
    load_maxlen: int | None = None  # keras load_data(maxlen=...): drops sequences this long or longer
    test_split: float = 0.2  # reuters and own files; IMDB has fixed 25k/25k splits
    maxlen: int = 200  # the model's input length (pad/truncate); sequences: set from the data; lm: window length
    padding: Literal["pre", "post"] = "pre"
    truncating: Literal["pre", "post"] = "pre"
    # model
    cell: Literal["simple_rnn", "gru", "lstm"] = "lstm"
    embedding_dim: int = 32
    units: int = 32
    layers: int = 1
    bidirectional: bool = False
    dropout: float = 0.0
    recurrent_dropout: float = 0.0
    mask_zero: bool = False  # masking makes padding invisible to the RNN
    conv_filters: int = 0  # >0 adds a Conv1D + MaxPooling1D front before the RNN
    conv_kernel: int = 5
    pool_size: int = 4
    # "max": max over all time steps of the last RNN layer; "max_mean": max and mean over the steps the mask
    # keeps (every step without a mask), concatenated
    pooling: Literal["last", "max", "max_mean"] = "last"
    embedding_dropout: float = 0.0  # spatial dropout: whole embedding channels dropped per text
    dense_units: int = 0  # >0 adds a relu Dense layer before the output
    head_dropout: float = 0.0
    # optimisation
    optimizer: Literal["rmsprop", "adam", "adamw"] = "rmsprop"
    learning_rate: float = 1e-3
    weight_decay: float = 0.004  # adamw only (Keras's default)
    lr_schedule: Literal["constant", "cosine"] = "constant"  # cosine: decays to 0 over all epochs' steps
    label_smoothing: float = 0.0
    class_weight: Literal["none", "balanced", "sqrt"] = "none"  # "sqrt": the square root of "balanced"
    # "skipgram": the embedding starts from word vectors learnt (gensim word2vec, skip-gram) on the texts the
    # model trains on (never the validation or test texts), then trains on
    pretrained_embeddings: Literal["none", "skipgram"] = "none"
    ensemble: int = 1  # >1 trains this many models (seeds seed, seed+1, ...) served as one: probabilities averaged
    batch_size: int = 128
    epochs: int = 10
    validation_split: float = 0.2  # Keras takes the last fraction of the training split
    early_stopping_patience: int = 0  # 0 = off; else stop on val_loss and restore the best weights
    seed: int = 1337

    def validate(self) -> TrainConfig:
        positive = ("maxlen", "embedding_dim", "units", "layers", "batch_size", "epochs", "ensemble", "features")
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.cell not in ("simple_rnn", "gru", "lstm"):
            raise ConfigError(f"cell must be simple_rnn, gru or lstm, got {self.cell!r}")
        choices = {"optimizer": ("rmsprop", "adam", "adamw"), "pooling": ("last", "max", "max_mean"),
                   "lr_schedule": ("constant", "cosine"), "class_weight": ("none", "balanced", "sqrt"),
                   "pretrained_embeddings": ("none", "skipgram"), "task": ("text", "sequences", "lm")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        for name in ("padding", "truncating"):
            if getattr(self, name) not in ("pre", "post"):
                raise ConfigError(f"{name} must be 'pre' or 'post'")
        for name in ("dropout", "recurrent_dropout", "head_dropout", "embedding_dropout", "validation_split",
                     "label_smoothing"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if not 0.0 < self.test_split < 1.0:
            raise ConfigError(f"test_split must be in (0, 1), got {self.test_split}")
        if self.pooling == "max" and self.mask_zero:
            raise ConfigError("pooling='max' needs mask_zero off (Keras's max pooling ignores masks); "
                              "pooling='max_mean' uses the mask")
        if self.task != "text":
            text_only = {"mask_zero": False, "char_level": False, "pretrained_embeddings": "none", "conv_filters": 0}
            if self.task == "lm":
                text_only |= {"bidirectional": False, "pooling": "last", "ensemble": 1, "label_smoothing": 0.0,
                              "class_weight": "none"}
            for name, default in text_only.items():
                if getattr(self, name) != default:
                    raise ConfigError(f"{name} does not apply to task={self.task!r}")
        if self.task == "text" and self.dataset.removesuffix(".gz").endswith(".npz"):
            raise ConfigError("an .npz dataset holds numeric sequences: add task='sequences' (--task sequences)")
        if self.char_level and self.dataset in ("imdb", "reuters"):
            raise ConfigError("char_level needs raw text: give a CSV/JSONL file as dataset (the Keras datasets "
                              "ship word ids)")
        try:
            check_rules(self.normalization_rules() or [])
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        if self.weight_decay < 0:
            raise ConfigError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if self.mask_zero and self.conv_filters:
            raise ConfigError("mask_zero cannot be combined with a Conv1D front (Conv1D does not carry masks)")
        if self.conv_filters and self.maxlen < self.conv_kernel * self.pool_size:
            raise ConfigError("maxlen is too short for the Conv1D kernel and pooling")
        return self

    def normalization_rules(self) -> list[str] | None:
        """The rules asked for; None for the dataset's default."""
        if self.normalization is None:
            return None
        return [r.strip() for r in self.normalization.split(",") if r.strip() and r.strip() != "none"]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ConfigError(f"unknown config fields: {sorted(unknown)}")
        return cls(**data).validate()


# The bundled classifiers' tokenizers read typographic text as typed (service/core/normalize.py; measured in
# docs/models.md); for the Keras datasets the rules only enter the tokenizer spec, their ids are Keras's.
TYPOGRAPHIC = "quotes,dashes,nfkc,spaces"
_IMDB_TUTORIAL = dict(dataset="imdb", num_words=10000, maxlen=200, embedding_dim=32, units=32, dense_units=32,
                      optimizer="rmsprop", batch_size=128, epochs=10, validation_split=0.2,
                      normalization=TYPOGRAPHIC)
_REUTERS_TUTORIAL = dict(dataset="reuters", num_words=30000, load_maxlen=50, maxlen=50, test_split=0.3,
                         padding="post", truncating="post", embedding_dim=50, units=50, optimizer="adam",
                         learning_rate=1e-3, batch_size=50, epochs=30, early_stopping_patience=3)

PRESETS: dict[str, dict] = {
    # Classic tutorials, reproduced as published (reported test accuracy in the comment).
    "imdb-simple-rnn-tutorial": {**_IMDB_TUTORIAL, "cell": "simple_rnn"},  # 85%
    "imdb-lstm-tutorial": {**_IMDB_TUTORIAL, "cell": "lstm"},  # 88%
    "imdb-gru-tutorial": {**_IMDB_TUTORIAL, "cell": "gru"},  # 88.5% with maxlen 500
    "imdb-lstm-dropout": dict(dataset="imdb", num_words=5000, maxlen=80, embedding_dim=32, cell="lstm", units=100,
                              dropout=0.2, recurrent_dropout=0.2, optimizer="adam", batch_size=64, epochs=7),
    "reuters-tutorial-simple-rnn": {**_REUTERS_TUTORIAL, "cell": "simple_rnn"},  # 74.96%
    "reuters-tutorial-stacked-simple-rnn": {**_REUTERS_TUTORIAL, "cell": "simple_rnn", "layers": 3},  # 77.46%
    "reuters-tutorial-lstm": {**_REUTERS_TUTORIAL, "cell": "lstm"},  # 84.64%
    "reuters-tutorial-stacked-lstm": {**_REUTERS_TUTORIAL, "cell": "lstm", "layers": 3},  # 84.81%
    # A Conv1D front, as in the keras-io / seed tutorial "imdb_cnn_lstm".
    "imdb-cnn-lstm": dict(dataset="imdb", num_words=20000, maxlen=100, embedding_dim=128, conv_filters=64,
                          conv_kernel=5, pool_size=4, cell="lstm", units=70, optimizer="adam", batch_size=30,
                          epochs=2),
}

# The bundled SimpleRNNs (models/): bidirectional layers whose outputs are max-pooled over time. Early stopping
# watches the validation split, which Keras takes from the end of the training split; the test split is never
# seen in training.
_IMDB = dict(dataset="imdb", num_words=30000, maxlen=600, embedding_dim=64, units=64, bidirectional=True,
             pooling="max", dropout=0.2, head_dropout=0.5, optimizer="adam", learning_rate=1e-3, batch_size=64,
             epochs=4, validation_split=0.1, early_stopping_patience=1, normalization=TYPOGRAPHIC)
_REUTERS = dict(dataset="reuters", num_words=20000, maxlen=300, embedding_dim=128, units=128, bidirectional=True,
                pooling="max", head_dropout=0.3, optimizer="adam", learning_rate=1e-3, batch_size=64, epochs=20,
                validation_split=0.15, early_stopping_patience=3, normalization=TYPOGRAPHIC)
# The strong recurrent models (issue 15): bidirectional masked LSTM/GRU whose outputs are max- and mean-pooled
# over the real (unpadded) steps, embeddings started from skip-gram vectors learnt on the texts trained on,
# spatial dropout, AdamW with cosine decay, and three seeds averaged in one graph. Chosen on the validation
# split (the end of the training split); see docs/models.md for what each choice gave.
_STRONG = dict(pretrained_embeddings="skipgram", embedding_dropout=0.2, bidirectional=True, mask_zero=True,
               pooling="max_mean", head_dropout=0.3, optimizer="adamw", learning_rate=2e-3, lr_schedule="cosine",
               ensemble=3, normalization=TYPOGRAPHIC)
_IMDB_STRONG = dict(_STRONG, dataset="imdb", num_words=20000, maxlen=500, embedding_dim=64, units=64, batch_size=64,
                    epochs=3, validation_split=0.1, early_stopping_patience=1)
# Reuters: the start of a newswire says most (truncate the end), 46 classes with few examples each (label
# smoothing).
_REUTERS_STRONG = dict(_STRONG, dataset="reuters", num_words=10000, maxlen=200, truncating="post",
                       embedding_dim=128, units=128, label_smoothing=0.1, batch_size=64, epochs=15,
                       validation_split=0.15, early_stopping_patience=3)
PRESETS |= {
    "imdb-lstm-ensemble": {**_IMDB_STRONG, "cell": "lstm"},
    # The earlier bundled LSTM, kept: a masked LSTM(32) at a tenth of the size and a fraction of the cost (the
    # file-scoring, tokenizer and explanation benchmarks use it); the service pads its batches only to their
    # longest review.
    "imdb-lstm-small": dict(dataset="imdb", cell="lstm", num_words=10000, maxlen=500, embedding_dim=32, units=32,
                            mask_zero=True, optimizer="rmsprop", batch_size=128, epochs=10, early_stopping_patience=2,
                            normalization=TYPOGRAPHIC),
    "imdb-gru-ensemble": {**_IMDB_STRONG, "cell": "gru"},
    # A Conv1D front shortens the 600 steps to 149, which a SimpleRNN can carry.
    "imdb-simple-rnn": {**_IMDB, "cell": "simple_rnn", "conv_filters": 64, "conv_kernel": 5, "pool_size": 4},
    "reuters-lstm-ensemble": {**_REUTERS_STRONG, "cell": "lstm"},
    "reuters-gru-ensemble": {**_REUTERS_STRONG, "cell": "gru"},
    "reuters-simple-rnn": {**_REUTERS, "cell": "simple_rnn"},
}
# The default names (issue 28): one model each, distilled from its ensemble (`rnnserve-train distill --teacher
# models/TEACHER/1 --preset NAME`, training/distill.py, temperature 2, alpha 0.5): the ensemble's accuracy within
# half a point at a fraction of its cost. Chosen on the validation split; see docs/models.md.
PRESETS |= {
    "imdb-lstm": {**_IMDB_STRONG, "cell": "lstm", "units": 32, "ensemble": 1, "epochs": 4},
    "reuters-lstm": {**_REUTERS_STRONG, "cell": "lstm", "units": 64, "ensemble": 1},
}
TEACHERS = {"imdb-lstm": "imdb-lstm-ensemble", "reuters-lstm": "reuters-lstm-ensemble"}  # distilled: its teacher
# The seeds' other recurrent systems (issue 16): numeric sequences and a character language model.
PRESETS |= {
    # The tutorial's LSTM(64) on sequences of shape (10, 1): the next value of a noisy sine wave.
    "waves-lstm-tutorial": dict(task="sequences", dataset="waves-next", maxlen=10, features=1, cell="lstm",
                                units=64, optimizer="adam", batch_size=32, epochs=30, validation_split=0.1,
                                early_stopping_patience=4),
    "waves-kind-gru": dict(task="sequences", dataset="waves-kind", maxlen=10, features=1, cell="gru", units=64,
                           optimizer="adam", batch_size=32, epochs=30, validation_split=0.1,
                           early_stopping_patience=4),
    # Many-to-many: the next value after every step (return_sequences).
    "waves-steps-lstm": dict(task="sequences", dataset="waves-steps", maxlen=10, features=1, cell="lstm",
                             units=64, optimizer="adam", batch_size=32, epochs=30, validation_split=0.1,
                             early_stopping_patience=4),
    # A char-RNN (the PyTorch tutorial's vanilla RNN, here Keras) on the raw Reuters training text.
    "reuters-char-rnn": dict(task="lm", dataset="reuters-text", max_chars=2_000_000, maxlen=100, test_split=0.1,
                             cell="simple_rnn", embedding_dim=32, units=256, optimizer="adam",
                             learning_rate=2e-3, batch_size=64, epochs=6, validation_split=0.05,
                             early_stopping_patience=1),
}
# Served by default. imdb-lstm-tutorial is the LSTM(32), maxlen-200 model the load benchmarks use.
BUNDLED = ("imdb-lstm-ensemble", "imdb-gru-ensemble", "imdb-simple-rnn", "reuters-lstm-ensemble",
           "reuters-gru-ensemble", "reuters-simple-rnn", "imdb-lstm", "reuters-lstm", "imdb-lstm-small",
           "imdb-lstm-tutorial", "waves-lstm-tutorial", "reuters-char-rnn")  # teachers before their students

TUTORIAL_ACCURACY = {
    "imdb-simple-rnn-tutorial": 0.85,
    "imdb-lstm-tutorial": 0.88,
    "imdb-gru-tutorial": 0.885,
    "reuters-tutorial-simple-rnn": 0.7496,
    "reuters-tutorial-stacked-simple-rnn": 0.7746,
    "reuters-tutorial-lstm": 0.8464,
    "reuters-tutorial-stacked-lstm": 0.8481,
}


def preset_config(name: str, **overrides) -> TrainConfig:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose from: {', '.join(sorted(PRESETS))}")
    return TrainConfig.from_dict({**PRESETS[name], **overrides})
