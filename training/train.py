"""Train one model and write a run directory: the Keras model(s), what turns input into the model's input
(tokenizer.json, or input.json for numeric sequences), labels, history, metrics, plots."""

from __future__ import annotations

import json
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rnnserve.service.core.package import sha256_file
from rnnserve.service.core.tokenizer import Tokenizer
from rnnserve.training.config import ConfigError, TrainConfig
from rnnserve.training.data import Dataset, load_keras_dataset, load_text_dataset
from rnnserve.training.distill import Distillation, compile_student, distillation_targets
from rnnserve.training.metrics import (
    classification_metrics,
    confusion_matrix,
    plot_confusion,
    plot_history,
    regression_metrics,
)


def run_files(cfg: TrainConfig) -> list[str]:
    """What export needs from a run directory of this configuration."""
    inputs = {"text": ["tokenizer.json", "labels.json"], "sequences": ["input.json", "labels.json"],
              "lm": ["tokenizer.json"]}[cfg.task]
    return ["config.json", "history.json", "metrics.json", *inputs, *member_files(cfg)]


def load_dataset(cfg: TrainConfig, data_dir: str | Path | None) -> Dataset:
    common = dict(pad_to=cfg.maxlen, padding=cfg.padding, truncating=cfg.truncating)
    if cfg.dataset in ("imdb", "reuters"):
        return load_keras_dataset(cfg.dataset, data_dir, num_words=cfg.num_words, skip_top=cfg.skip_top,
                                  maxlen=cfg.load_maxlen, test_split=cfg.test_split,
                                  normalization=cfg.normalization_rules(), **common)
    return load_text_dataset(cfg.dataset, cfg.text_column, cfg.label_column, num_words=cfg.num_words,
                             test_split=cfg.test_split, char_level=cfg.char_level,
                             normalization=cfg.normalization_rules(), **common)


def dataset_fingerprint(cfg: TrainConfig) -> dict:
    """{"dataset_sha256": ...} for a dataset that is a file of one's own (what a student checks it learns on
    the same texts, wherever the file is now); {} for the Keras and synthetic data sets, named by their name."""
    path = Path(cfg.dataset)
    return {"dataset_sha256": sha256_file(path)} if path.is_file() else {}


def seed_everything(seed: int) -> None:
    import keras

    os.environ.setdefault("PYTHONHASHSEED", str(seed))
    random.seed(seed)
    np.random.seed(seed)
    keras.utils.set_random_seed(seed)


def member_files(cfg: TrainConfig) -> list[str]:
    """The Keras model files of a run: model.keras, then model-1.keras ... for an ensemble's other members."""
    return ["model.keras"] + [f"model-{i}.keras" for i in range(1, cfg.ensemble)]


def split_validation(cfg: TrainConfig, x: np.ndarray, y: np.ndarray):
    """Keras's validation_split: the last fraction of the training split, taken before any shuffling."""
    at = int(len(x) * (1.0 - cfg.validation_split))
    return (x[:at], y[:at]), (x[at:], y[at:])


def class_weights(cfg: TrainConfig, y: np.ndarray, num_classes: int) -> dict[int, float] | None:
    if cfg.class_weight == "none":
        return None
    counts = np.bincount(y, minlength=num_classes)
    balanced = np.where(counts > 0, len(y) / (num_classes * np.maximum(counts, 1)), 1.0)
    weights = np.sqrt(balanced) if cfg.class_weight == "sqrt" else balanced
    return {c: float(w) for c, w in enumerate(weights)}


@dataclass(kw_only=True)
class Prepared:
    """A task's data, ready for Keras, and how to build, score and describe its models."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    build: Callable[..., Any]  # (steps_per_epoch, embeddings) -> compiled keras.Model
    labels: list[str] | None  # class names (their weights and confusion matrix); None: values, characters
    predict: Callable[[Any, np.ndarray], np.ndarray]  # (a model or an ensemble's list, x) -> outputs
    score: Callable[[np.ndarray, np.ndarray], dict]  # (targets, outputs) -> metrics
    files: dict[str, str] = field(default_factory=dict)  # run-directory files: name -> text
    embedding_texts: list[list[int]] | None = None  # token ids for skip-gram (text only)
    vocab_size: int = 0


def prepare_text(cfg: TrainConfig, data_dir) -> Prepared:
    from rnnserve.training.models import build_model, predict_proba

    ds = load_dataset(cfg, data_dir)
    tok = Tokenizer(ds.tokenizer)
    n_fit = int(len(ds.x_train) * (1.0 - cfg.validation_split))
    return Prepared(x_train=tok.pad(ds.x_train), y_train=ds.y_train, x_test=tok.pad(ds.x_test), y_test=ds.y_test,
                    build=lambda steps, emb: build_model(cfg, ds.tokenizer.vocab_size, ds.num_classes, steps, emb),
                    labels=ds.labels, predict=predict_proba, score=classification_metrics,
                    files={"tokenizer.json": ds.tokenizer.to_json(), "labels.json": json.dumps(ds.labels)},
                    embedding_texts=ds.x_train[:n_fit], vocab_size=ds.tokenizer.vocab_size)


def prepare_sequences(cfg: TrainConfig) -> Prepared:
    from rnnserve.service.core.sequences import normalize
    from rnnserve.training.models import build_sequence_model, predict_proba, predict_values
    from rnnserve.training.sequences import load_sequence_dataset, normalization

    ds = load_sequence_dataset(cfg.dataset, cfg.maxlen, cfg.features, cfg.label_column, cfg.regression,
                               cfg.test_split)
    steps, features = ds.shape
    if (steps, features) != (cfg.maxlen, cfg.features):
        raise ConfigError(f"the sequences are [T, F] = [{steps}, {features}]: set maxlen={steps} and "
                          f"features={features}")
    (x_fit, _), _ = split_validation(cfg, ds.x_train, ds.y_train)
    stats = normalization(x_fit)  # from the sequences trained on only
    outputs = len(ds.labels) if ds.labels else 1
    spec = {"shape": [steps, features], "normalization": stats, "per_step": ds.per_step, "task": ds.task}
    return Prepared(x_train=normalize(ds.x_train, stats), y_train=ds.y_train, x_test=normalize(ds.x_test, stats),
                    y_test=ds.y_test,
                    build=lambda steps_per_epoch, emb: build_sequence_model(cfg, outputs, ds.per_step,
                                                                            steps_per_epoch),
                    labels=ds.labels, predict=predict_proba if ds.labels else predict_values,
                    score=classification_metrics if ds.labels else regression_metrics,
                    files={"input.json": json.dumps(spec), "labels.json": json.dumps(ds.labels or [])})


def prepare(cfg: TrainConfig, data_dir) -> Prepared:
    if cfg.task == "lm":
        from rnnserve.training.lm import prepare_lm

        return prepare_lm(cfg, data_dir)
    return prepare_sequences(cfg) if cfg.task == "sequences" else prepare_text(cfg, data_dir)


def score_test_split(data: Prepared, models, out: Path) -> dict:
    """Test-split metrics (and, for classifiers, the confusion matrix plot)."""
    out_test = data.predict(models, data.x_test)
    if data.labels:
        plot_confusion(confusion_matrix(data.y_test, out_test.argmax(1), len(data.labels)), data.labels,
                       out / "confusion.png")
    return data.score(data.y_test, out_test)


def evaluate_run_on_test(run_dir: str | Path, data_dir: str | Path | None = None) -> dict:
    """Evaluate a --validation-only run on the test split: once, for the configuration chosen on validation."""
    import keras

    run = Path(run_dir)
    cfg = TrainConfig.from_dict(json.loads((run / "config.json").read_text()))
    metrics = json.loads((run / "metrics.json").read_text())
    if "test" in metrics:
        raise ConfigError(f"{run} has been evaluated on the test split already")
    models = [keras.models.load_model(run / f) for f in member_files(cfg)]
    metrics["test"] = score_test_split(prepare(cfg, data_dir), models, run)
    (run / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics


def train(cfg: TrainConfig, out_dir: str | Path, data_dir: str | Path | None = None, verbose: int = 1,
          evaluate_test: bool = True, distillation: Distillation | None = None) -> dict:
    """Fit (each ensemble member in turn), evaluate on the validation split and, unless told not to, on the
    test split; save everything export needs into out_dir. distillation: fit on a teacher package's
    probabilities as well as the labels (training/distill.py). Raises ConfigError for a configuration that
    cannot be trained (or a teacher it cannot learn from)."""
    from rnnserve.training.embeddings import skipgram_embeddings

    cfg.validate()
    if distillation:
        distillation.check(cfg)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    seed_everything(cfg.seed)
    data = prepare(cfg, data_dir)
    (x_fit, y_fit), (x_val, y_val) = split_validation(cfg, data.x_train, data.y_train)
    started = time.perf_counter()
    embeddings = None
    if cfg.pretrained_embeddings == "skipgram":
        embeddings = skipgram_embeddings(data.embedding_texts, data.vocab_size, cfg.embedding_dim, cfg.seed)
    weights = class_weights(cfg, y_fit, len(data.labels)) if data.labels else None
    soft = distillation.soft_targets(cfg.dataset, len(x_fit), y_fit, data_dir) if distillation else None
    models, histories = fit_members(cfg, out, data, (x_fit, y_fit), (x_val, y_val), embeddings, weights, verbose,
                                    distillation and (distillation, soft))
    metrics = {
        **dataset_fingerprint(cfg),
        "train_seconds": round(time.perf_counter() - started, 1),
        "epochs_run": sum(len(h.get("loss", [])) for h in histories),
        "params": int(sum(m.count_params() for m in models)),
        "split_sizes": {"train": len(data.x_train), "fit": len(x_fit), "validation": len(x_val),
                        "test": len(data.x_test)},
    }
    if len(x_val):
        metrics["validation"] = data.score(y_val, data.predict(models, x_val))
        if len(models) > 1:
            metrics["validation_members"] = [data.score(y_val, data.predict(m, x_val)) for m in models]
    if evaluate_test:
        metrics["test"] = score_test_split(data, models, out)
    for name, text in data.files.items():
        (out / name).write_text(text, encoding="utf-8")
    if distillation:
        distillation.write(out)
    (out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
    (out / "history.json").write_text(json.dumps(histories[0], indent=2))  # the curves show the first member
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    plot_history(histories[0], out / "curves.png")
    return metrics


def fit_members(cfg: TrainConfig, out: Path, data: Prepared, fit, val, embeddings, weights, verbose,
                teacher: tuple[Distillation, np.ndarray] | None = None):
    """Train cfg.ensemble models (seeds seed, seed + 1, ...) and save each; early stopping on the validation
    loss (with a teacher: on the loss against the true labels). teacher: the distillation and its soft
    targets for the fit examples, [N, C]."""
    import keras

    onehot = cfg.label_smoothing > 0 and data.labels and len(data.labels) > 2  # smoothing wants one-hot targets

    def targets(y, soft=None):
        if teacher:
            return distillation_targets(y, len(data.labels), soft, cfg.label_smoothing)
        return keras.utils.to_categorical(y, len(data.labels)) if onehot else y

    models, histories = [], []
    for i, filename in enumerate(member_files(cfg)):
        seed_everything(cfg.seed + i)
        model = data.build(-(-len(fit[0]) // cfg.batch_size), embeddings)
        loss = model.loss
        if teacher:
            compile_student(model, len(data.labels), teacher[0])
        callbacks = []
        if cfg.early_stopping_patience:
            callbacks.append(keras.callbacks.EarlyStopping(
                monitor="val_label_loss" if teacher else "val_loss", mode="min",
                patience=cfg.early_stopping_patience, restore_best_weights=True))
        history = model.fit(fit[0], targets(fit[1], teacher and teacher[1]), batch_size=cfg.batch_size,
                            epochs=cfg.epochs, validation_data=(val[0], targets(val[1])) if len(val[0]) else None,
                            class_weight=weights, callbacks=callbacks, verbose=verbose)
        if teacher:  # saved with its own loss: a file that loads without this module's functions
            model.compile(optimizer=model.optimizer, loss=loss, metrics=["accuracy"])
        model.save(out / filename)
        models.append(model)
        histories.append({k: [float(v) for v in vs] for k, vs in history.history.items()})
    return models, histories
