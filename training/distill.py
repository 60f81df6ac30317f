"""Distillation: a student trained on a teacher package's probabilities as well as on the true labels.

    rnnserve-train distill --teacher models/imdb-lstm-ensemble/1 --preset imdb-lstm --export imdb-lstm

The loss is Hinton, Vinyals and Dean's ("Distilling the Knowledge in a Neural Network", 2015, section 2):
`alpha * CE(labels, p) + (1 - alpha) * T^2 * CE(softmax(log q / T), softmax(log p / T))`, where p is the
student's probabilities, q the teacher's and T the temperature (the T^2 keeps the soft term's gradients on the
scale of the hard one's). Softmax models' log-probabilities are their logits up to a constant, so
`softmax(log p / T)` is the usual softened softmax; a sigmoid's p is read as [1 - p, p].

The teacher runs through onnxruntime, as the server runs it, on the texts the student fits and no others:
never the validation split (the student is chosen on it) or the test split. The student's dataset, test split
and validation split must be the teacher's, so the texts the student is chosen on were never trained on by the
teacher either: a Keras dataset by its name, a file of one's own by its sha256, which the teacher's package
records (`dataset.sha256`), wherever the file is now.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path

import numpy as np

from rnnserve.service.core.package import Package, PackageError, Task, read_package, sha256_file
from rnnserve.service.core.tokenizer import Tokenizer
from rnnserve.training.config import ConfigError, TrainConfig

DISTILLATION_FILE = "distillation.json"  # in the run directory; export copies it into metadata.json's `distillation`


@dataclass(frozen=True)
class Distillation:
    """How a student learns from a teacher package (a text classifier's directory, e.g. models/imdb-lstm/1).

    temperature: T > 0, softens both distributions (1: none). alpha in [0, 1]: the true labels' share of the
    loss (0: the teacher alone; 1: no distillation)."""

    teacher: Path
    temperature: float = 2.0
    alpha: float = 0.5

    @cached_property
    def package(self) -> Package:
        """The teacher package, read and checked once; ConfigError when it is unreadable or no text
        classifier."""
        if not Path(self.teacher).is_dir():
            raise ConfigError(f"--teacher {self.teacher}: no such package directory (MODELS/NAME/VERSION)")
        try:
            package = read_package(self.teacher)
        except PackageError as exc:
            raise ConfigError(f"--teacher {self.teacher}: {exc}") from None
        if package.task != Task.TEXT_CLASSIFICATION:
            raise ConfigError(f"--teacher {self.teacher} is a {package.task} package; a teacher is a text classifier")
        if not package.metadata.training:
            raise ConfigError(f"--teacher {self.teacher} was not trained here (no training section): its training "
                              "texts are unknown, so the student cannot be given the same ones")
        return package

    def teacher_config(self) -> TrainConfig:
        """The teacher's training configuration, the student's starting point."""
        training = self.package.metadata.training
        return TrainConfig.from_dict({k: v for k, v in training.items() if k in TrainConfig.__dataclass_fields__})

    def check(self, cfg: TrainConfig) -> None:
        """ConfigError unless the student (cfg) can learn from this teacher."""
        if not (self.temperature > 0 and math.isfinite(self.temperature)):
            raise ConfigError(f"--temperature must be a finite number > 0, got {self.temperature}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ConfigError(f"--alpha must be in [0, 1], got {self.alpha}")
        if cfg.task != "text":
            raise ConfigError("distillation trains text classifiers (task='text')")
        if cfg.class_weight != "none":
            raise ConfigError("class_weight does not apply to distillation: the teacher's probabilities are targets")
        teacher = self.teacher_config()
        same = ["test_split", "validation_split", "label_column"]
        recorded = self.package.metadata.dataset.get("sha256")
        if recorded:  # a file of one's own: the same bytes, wherever the file is now
            path = Path(cfg.dataset)
            if not path.is_file() and cfg.dataset != teacher.dataset:
                raise ConfigError(f"the student's dataset ({cfg.dataset!r}) must be the teacher's (the file "
                                  f"{teacher.dataset!r}, sha256 {recorded[:12]}...)")
            if not path.is_file():
                raise ConfigError(f"the teacher's dataset {cfg.dataset!r} is not here: pass --dataset with the "
                                  "file it was trained on")
            if sha256_file(path) != recorded:
                raise ConfigError(f"{cfg.dataset} is not the file the teacher was trained on (its sha256 differs "
                                  f"from the teacher's {recorded[:12]}...): the student must fit the same texts")
        else:
            same.insert(0, "dataset")
        for name in same:
            if getattr(cfg, name) != getattr(teacher, name):
                raise ConfigError(f"the student's {name} ({getattr(cfg, name)!r}) must be the teacher's "
                                  f"({getattr(teacher, name)!r}): the teacher never trained on the texts the "
                                  "student is chosen on")

    def soft_targets(self, dataset: str, n_fit: int, y_fit: np.ndarray, data_dir) -> np.ndarray:
        """The teacher's probabilities at the temperature, [n_fit, C] float32, for the first n_fit training
        examples of `dataset` (the texts the student fits; check() showed it is the teacher's), tokenized as
        the teacher tokenizes and run through onnxruntime. ConfigError when the teacher's labels for those
        examples are not the student's."""
        from rnnserve.training.quantize import predict_package
        from rnnserve.training.train import load_dataset

        package = self.package
        ds = load_dataset(replace(self.teacher_config(), dataset=dataset), data_dir)
        if len(ds.x_train) < n_fit or not np.array_equal(np.asarray(ds.y_train[:n_fit]), np.asarray(y_fit)):
            raise ConfigError(f"the teacher's training examples are not the student's: {self.teacher} was "
                              "trained on another copy of the dataset")
        tokenizer = Tokenizer(package.tokenizer)
        order = np.argsort([len(ids) for ids in ds.x_train[:n_fit]], kind="stable")  # similar lengths batch well
        probs = np.empty((n_fit, len(package.labels)), dtype=np.float32)
        for at in range(0, n_fit, 256):
            rows = order[at:at + 256]
            x = tokenizer.pad([ds.x_train[i] for i in rows], dynamic=package.metadata.dynamic_length)
            probs[rows] = predict_package(package.path / "model.onnx", package.metadata, x)
        return soften(probs, self.temperature)

    def record(self) -> dict:
        """What the student's package says of its teacher: metadata.json's `distillation`."""
        meta = self.package.metadata
        return {"teacher": {"name": meta.name, "version": meta.version, "sha256": meta.onnx.sha256,
                            "test_accuracy": meta.metrics.get("test", {}).get("accuracy")},
                "temperature": self.temperature, "alpha": self.alpha, "method": "Hinton et al. 2015, soft targets"}

    def write(self, run: Path) -> None:
        (run / DISTILLATION_FILE).write_text(json.dumps(self.record(), indent=2))


def soften(probs: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(log p / T) per row: [N, C] probabilities -> [N, C] (p itself at T = 1)."""
    logits = np.log(np.clip(probs.astype(np.float64), 1e-12, 1.0)) / temperature
    logits -= logits.max(axis=1, keepdims=True)
    e = np.exp(logits)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def two_columns(y_pred):
    """A sigmoid's [N, 1] as [N, 2] = [1 - p, p]; a softmax's [N, C] unchanged."""
    import keras

    return keras.ops.concatenate([1.0 - y_pred, y_pred], axis=1) if y_pred.shape[-1] == 1 else y_pred


def distillation_targets(labels: np.ndarray, classes: int, soft: np.ndarray | None,
                         label_smoothing: float = 0.0) -> np.ndarray:
    """y_true for the distillation loss: [N, 2C] = the labels one-hot (smoothed as Keras smooths) beside the
    teacher's softened probabilities; without them (validation) the labels stand in both halves."""
    onehot = np.eye(classes, dtype=np.float32)[np.asarray(labels)]
    onehot = onehot * (1.0 - label_smoothing) + label_smoothing / classes
    return np.concatenate([onehot, onehot if soft is None else soft], axis=1)


def compile_student(model, classes: int, distillation: Distillation) -> None:
    """Recompile a built student (its optimizer kept) with the distillation loss, and metrics on the labels
    alone: `accuracy` and `label_loss` (the cross-entropy with the true labels, which early stopping watches)."""
    import keras

    t, alpha = distillation.temperature, distillation.alpha

    def distillation_loss(y_true, y_pred):
        p = keras.ops.clip(two_columns(y_pred), 1e-7, 1.0)
        hard = -keras.ops.sum(y_true[:, :classes] * keras.ops.log(p), axis=-1)
        log_soft = keras.ops.log_softmax(keras.ops.log(p) / t, axis=-1)
        soft = -keras.ops.sum(y_true[:, classes:] * log_soft, axis=-1) * t * t
        return alpha * hard + (1.0 - alpha) * soft

    def accuracy(y_true, y_pred):
        same = keras.ops.argmax(y_true[:, :classes], axis=-1) == keras.ops.argmax(two_columns(y_pred), axis=-1)
        return keras.ops.cast(same, "float32")

    def label_loss(y_true, y_pred):
        p = keras.ops.clip(two_columns(y_pred), 1e-7, 1.0)
        return -keras.ops.sum(y_true[:, :classes] * keras.ops.log(p), axis=-1)

    model.compile(optimizer=model.optimizer, loss=distillation_loss, metrics=[accuracy, label_loss])
