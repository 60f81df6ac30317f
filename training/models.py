"""build_model(config) -> a compiled Keras classifier: Embedding, optional Conv1D front, RNN stack, head."""

from __future__ import annotations

import keras

from training.config import TrainConfig

CELLS = {"simple_rnn": keras.layers.SimpleRNN, "gru": keras.layers.GRU, "lstm": keras.layers.LSTM}


def build_model(cfg: TrainConfig, vocab_size: int, num_classes: int) -> keras.Model:
    binary = num_classes == 2
    inputs = keras.Input(shape=(cfg.maxlen,), dtype="int64", name="input_ids")
    x = keras.layers.Embedding(vocab_size, cfg.embedding_dim, mask_zero=cfg.mask_zero, name="embedding")(inputs)
    if cfg.conv_filters:
        x = keras.layers.Conv1D(cfg.conv_filters, cfg.conv_kernel, activation="relu", name="conv1d")(x)
        x = keras.layers.MaxPooling1D(cfg.pool_size, name="max_pool")(x)
    for i in range(cfg.layers):
        rnn = CELLS[cfg.cell](cfg.units, dropout=cfg.dropout, recurrent_dropout=cfg.recurrent_dropout,
                              return_sequences=i < cfg.layers - 1 or cfg.pooling == "max", name=f"{cfg.cell}_{i}")
        if cfg.bidirectional:
            rnn = keras.layers.Bidirectional(rnn, name=f"bidirectional_{i}")
        x = rnn(x)
    if cfg.pooling == "max":
        x = keras.layers.GlobalMaxPooling1D(name="max_over_time")(x)
    if cfg.dense_units:
        x = keras.layers.Dense(cfg.dense_units, activation="relu", name="dense")(x)
    if cfg.head_dropout:
        x = keras.layers.Dropout(cfg.head_dropout, name="head_dropout")(x)
    outputs = keras.layers.Dense(1 if binary else num_classes, activation="sigmoid" if binary else "softmax",
                                 name="output")(x)
    model = keras.Model(inputs, outputs, name=f"{cfg.cell}_classifier")
    optimizer = {"rmsprop": keras.optimizers.RMSprop, "adam": keras.optimizers.Adam}[cfg.optimizer]
    model.compile(optimizer=optimizer(learning_rate=cfg.learning_rate),
                  loss="binary_crossentropy" if binary else "sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    return model


def predict_proba(model: keras.Model, x, batch_size: int = 512):
    """Class probabilities [N, C] for any head (a sigmoid's p becomes [1 - p, p])."""
    import numpy as np

    p = model.predict(x, batch_size=batch_size, verbose=0)
    return np.concatenate([1.0 - p, p], axis=1) if p.shape[1] == 1 else p
