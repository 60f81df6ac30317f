"""Compiled Keras models: text classifiers (Embedding, optional Conv1D front, RNN stack, head), numeric
sequence models (RNN stack on [T, F] floats, a class or a value per sequence or per step), and their
predictions as the packages give them."""

from __future__ import annotations

import keras

from rnnserve.training.config import TrainConfig
from rnnserve.training.layers import MaxMeanPooling

CELLS = {"simple_rnn": keras.layers.SimpleRNN, "gru": keras.layers.GRU, "lstm": keras.layers.LSTM}


def build_model(cfg: TrainConfig, vocab_size: int, num_classes: int, steps_per_epoch: int = 1,
                embeddings=None) -> keras.Model:
    """embeddings: an optional [vocab_size, embedding_dim] matrix the embedding starts from."""
    inputs = keras.Input(shape=(cfg.maxlen,), dtype="int64", name="input_ids")
    init = "uniform" if embeddings is None else keras.initializers.Constant(embeddings)
    x = keras.layers.Embedding(vocab_size, cfg.embedding_dim, mask_zero=cfg.mask_zero, embeddings_initializer=init,
                               name="embedding")(inputs)
    if cfg.embedding_dropout:
        x = keras.layers.SpatialDropout1D(cfg.embedding_dropout, name="embedding_dropout")(x)
    if cfg.conv_filters:
        x = keras.layers.Conv1D(cfg.conv_filters, cfg.conv_kernel, activation="relu", name="conv1d")(x)
        x = keras.layers.MaxPooling1D(cfg.pool_size, name="max_pool")(x)
    binary = num_classes == 2
    x = _head(cfg, _recurrent_stack(cfg, x), 1 if binary else num_classes, "sigmoid" if binary else "softmax")
    model = keras.Model(inputs, x, name=f"{cfg.cell}_classifier")
    loss = keras.losses.BinaryCrossentropy(label_smoothing=cfg.label_smoothing) if binary else _class_loss(cfg)
    model.compile(optimizer=_optimizer(cfg, steps_per_epoch), loss=loss, metrics=["accuracy"])
    return model


def build_sequence_model(cfg: TrainConfig, outputs: int, per_step: bool, steps_per_epoch: int = 1) -> keras.Model:
    """[N, T, F] floats -> class probabilities [N, C] (outputs > 1) or values [N, 1]; per_step: values
    [N, T, 1], one per step (many-to-many)."""
    inputs = keras.Input(shape=(cfg.maxlen, cfg.features), dtype="float32", name="sequences")
    classify = outputs > 1
    x = _head(cfg, _recurrent_stack(cfg, inputs, per_step), outputs, "softmax" if classify else None)
    model = keras.Model(inputs, x, name=f"{cfg.cell}_sequence_model")
    model.compile(optimizer=_optimizer(cfg, steps_per_epoch), loss=_class_loss(cfg) if classify else "mse",
                  metrics=["accuracy"] if classify else ["mae"])
    return model


def build_lm(cfg: TrainConfig, vocab_size: int, steps_per_epoch: int = 1) -> keras.Model:
    """Character ids [N, T] (any T) -> the next character's probabilities at every step [N, T, vocab]."""
    inputs = keras.Input(shape=(None,), dtype="int64", name="input_ids")
    x = keras.layers.Embedding(vocab_size, cfg.embedding_dim, name="embedding")(inputs)
    x = _head(cfg, _recurrent_stack(cfg, x, per_step=True), vocab_size, "softmax")
    model = keras.Model(inputs, x, name=f"{cfg.cell}_char_lm")
    model.compile(optimizer=_optimizer(cfg, steps_per_epoch), loss=_class_loss(cfg), metrics=["accuracy"])
    return model


def _recurrent_stack(cfg: TrainConfig, x, per_step: bool = False):
    """The RNN layers, then the pooling over steps (none when every step gets an output)."""
    for i in range(cfg.layers):
        sequences = i < cfg.layers - 1 or cfg.pooling != "last" or per_step
        rnn = CELLS[cfg.cell](cfg.units, dropout=cfg.dropout, recurrent_dropout=cfg.recurrent_dropout,
                              return_sequences=sequences, name=f"{cfg.cell}_{i}")
        if cfg.bidirectional:
            rnn = keras.layers.Bidirectional(rnn, name=f"bidirectional_{i}")
        x = rnn(x)
    if per_step:
        return x
    if cfg.pooling == "max":
        x = keras.layers.GlobalMaxPooling1D(name="max_over_time")(x)
    elif cfg.pooling == "max_mean":
        x = MaxMeanPooling(name="max_mean_over_time")(x)
    return x


def _head(cfg: TrainConfig, x, outputs: int, activation: str | None):
    if cfg.dense_units:
        x = keras.layers.Dense(cfg.dense_units, activation="relu", name="dense")(x)
    if cfg.head_dropout:
        x = keras.layers.Dropout(cfg.head_dropout, name="head_dropout")(x)
    return keras.layers.Dense(outputs, activation=activation, name="output")(x)


def _optimizer(cfg: TrainConfig, steps_per_epoch: int) -> keras.optimizers.Optimizer:
    rate = cfg.learning_rate
    if cfg.lr_schedule == "cosine":
        rate = keras.optimizers.schedules.CosineDecay(rate, decay_steps=cfg.epochs * steps_per_epoch)
    if cfg.optimizer == "adamw":
        return keras.optimizers.AdamW(learning_rate=rate, weight_decay=cfg.weight_decay)
    return {"rmsprop": keras.optimizers.RMSprop, "adam": keras.optimizers.Adam}[cfg.optimizer](learning_rate=rate)


def _class_loss(cfg: TrainConfig):
    if cfg.label_smoothing:  # only the one-hot loss smooths: train.py feeds one-hot targets then
        return keras.losses.CategoricalCrossentropy(label_smoothing=cfg.label_smoothing)
    return keras.losses.SparseCategoricalCrossentropy()


def predict_proba(models: keras.Model | list[keras.Model], x, batch_size: int = 512):
    """Class probabilities [N, C] for any head (a sigmoid's p becomes [1 - p, p]); an ensemble's mean."""
    import numpy as np

    if isinstance(models, list):
        return np.mean([predict_proba(m, x, batch_size) for m in models], axis=0)
    p = models.predict(x, batch_size=batch_size, verbose=0)
    return np.concatenate([1.0 - p, p], axis=1) if p.ndim == 2 and p.shape[1] == 1 else p


def predict_values(models: keras.Model | list[keras.Model], x, batch_size: int = 512):
    """A regression model's outputs, [N, 1] or [N, T, 1]; an ensemble's mean."""
    import numpy as np

    models = models if isinstance(models, list) else [models]
    return np.mean([m.predict(x, batch_size=batch_size, verbose=0) for m in models], axis=0)
