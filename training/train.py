"""Train one classifier and write a run directory: the Keras model, its tokenizer, history, metrics, plots."""

from __future__ import annotations

import json
import os
import random
import time
from pathlib import Path

import numpy as np

from service.tokenizer import Tokenizer
from training.config import TrainConfig
from training.data import Dataset, load_keras_dataset, load_text_dataset
from training.metrics import classification_metrics, confusion_matrix, plot_confusion, plot_history

RUN_FILES = ("model.keras", "config.json", "tokenizer.json", "labels.json", "history.json", "metrics.json")


def load_dataset(cfg: TrainConfig, data_dir: str | Path | None) -> Dataset:
    common = dict(pad_to=cfg.maxlen, padding=cfg.padding, truncating=cfg.truncating)
    if cfg.dataset in ("imdb", "reuters"):
        return load_keras_dataset(cfg.dataset, data_dir, num_words=cfg.num_words, skip_top=cfg.skip_top,
                                  maxlen=cfg.load_maxlen, test_split=cfg.test_split, **common)
    return load_text_dataset(cfg.dataset, cfg.text_column, cfg.label_column, num_words=cfg.num_words,
                             test_split=cfg.test_split, **common)


def seed_everything(seed: int) -> None:
    import keras

    os.environ.setdefault("PYTHONHASHSEED", str(seed))
    random.seed(seed)
    np.random.seed(seed)
    keras.utils.set_random_seed(seed)


def train(cfg: TrainConfig, out_dir: str | Path, data_dir: str | Path | None = None, verbose: int = 1) -> dict:
    """Fit, evaluate on the test split and save everything export needs into out_dir."""
    import keras

    from training.models import build_model, predict_proba

    cfg.validate()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    seed_everything(cfg.seed)
    ds = load_dataset(cfg, data_dir)
    tok = Tokenizer(ds.tokenizer)
    x_train, x_test = tok.pad(ds.x_train), tok.pad(ds.x_test)
    model = build_model(cfg, ds.tokenizer.vocab_size, ds.num_classes)
    callbacks = []
    if cfg.early_stopping_patience:
        callbacks.append(keras.callbacks.EarlyStopping(monitor="val_loss", patience=cfg.early_stopping_patience,
                                                       restore_best_weights=True))
    started = time.perf_counter()
    history = model.fit(x_train, ds.y_train, batch_size=cfg.batch_size, epochs=cfg.epochs,
                        validation_split=cfg.validation_split or None, callbacks=callbacks, verbose=verbose)
    train_seconds = time.perf_counter() - started
    probs = predict_proba(model, x_test)
    test = classification_metrics(ds.y_test, probs)
    metrics = {
        "test": test,
        "train_seconds": round(train_seconds, 1),
        "epochs_run": len(history.history.get("loss", [])),
        "params": int(model.count_params()),
        "split_sizes": {"train": len(ds.x_train), "test": len(ds.x_test)},
    }
    model.save(out / "model.keras")
    ds.tokenizer.save(out / "tokenizer.json")
    (out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
    (out / "labels.json").write_text(json.dumps(ds.labels))
    hist = {k: [float(v) for v in vs] for k, vs in history.history.items()}
    (out / "history.json").write_text(json.dumps(hist, indent=2))
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    plot_history(hist, out / "curves.png")
    plot_confusion(confusion_matrix(ds.y_test, probs.argmax(1), ds.num_classes), ds.labels, out / "confusion.png")
    return metrics
