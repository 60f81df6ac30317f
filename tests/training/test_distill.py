"""Distillation (training/distill.py): a tiny real student learns from a tiny real teacher package through the
CLI, records its teacher and is served; the loss is Hinton et al.'s; teachers it cannot learn from are named."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from rnnserve.service.core.package import read_package, seal
from rnnserve.training.config import ConfigError, TrainConfig
from rnnserve.training.distill import Distillation, compile_student, distillation_targets, soften
from tests.conftest import in_process, wait_ready
from tests.training.test_cli import run_cli


def test_a_student_learns_from_its_teacher_records_it_and_is_served(trained_repo, tmp_path):
    teacher = trained_repo / "topics-gru" / "1"
    models = tmp_path / "models"
    r = run_cli("distill", "--teacher", str(teacher), "--cell", "lstm", "--bidirectional", "--units", "4",
                "--epochs", "1", "--temperature", "3", "--alpha", "0.25", "--out", str(tmp_path / "run"),
                "--export", "student", "--models-dir", str(models))
    assert r.returncode == 0, r.stderr
    meta = read_package(models / "student" / "1").metadata
    source = read_package(teacher).metadata
    assert meta.distillation["teacher"] == {"name": "topics-gru", "version": 1, "sha256": source.onnx.sha256,
                                            "test_accuracy": source.metrics["test"]["accuracy"]}
    assert (meta.distillation["temperature"], meta.distillation["alpha"]) == (3.0, 0.25)
    # The student starts from the teacher's configuration: its data, with the flags' model.
    assert meta.training["dataset"] == source.training["dataset"] and meta.architecture["units"] == 4
    assert meta.architecture["ensemble"] == 1 and meta.labels == source.labels
    assert 0 <= meta.metrics["test"]["accuracy"] <= 1
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert {"loss", "accuracy", "label_loss"} <= set(history)
    with in_process(models) as client:
        wait_ready(client)
        r = client.post("/v1/models/student/predict", json={"texts": ["a wonderful film", "dull"]})
        assert r.status_code == 200 and len(r.json()["predictions"]) == 2
        assert client.get("/v1/models/student").json()["distillation"]["teacher"]["name"] == "topics-gru"


def test_the_teachers_probabilities_are_those_the_server_gives_for_the_fit_texts(trained_repo, tmp_path):
    """At T = 1 the soft targets are the teacher package's own probabilities for the examples the student
    fits, in order: the same numbers its tokenizer and model.onnx give through the service."""
    from rnnserve.service.runtime.loader import open_model
    from rnnserve.service.runtime.text import Occluded
    from rnnserve.training.train import load_dataset

    teacher = Distillation(trained_repo / "topics-gru" / "1", temperature=1.0)
    cfg = teacher.teacher_config()
    ds = load_dataset(cfg, None)
    soft = teacher.soft_targets(cfg.dataset, 10, np.asarray(ds.y_train[:10]), None)
    runtime = open_model(teacher.teacher)
    served = runtime.run_batch([Occluded(np.asarray(ids), ()) for ids in ds.x_train[:10]]).probabilities
    np.testing.assert_allclose(soft, served, atol=1e-6)
    with pytest.raises(ConfigError, match="training examples are not the student's"):
        teacher.soft_targets(cfg.dataset, 10, 1 - np.asarray(ds.y_train[:10]), None)


def test_the_loss_is_hintons():
    import keras

    rng = np.random.default_rng(0)
    classes, t, alpha = 3, 2.5, 0.3
    labels = rng.integers(0, classes, 16)
    teacher = rng.dirichlet(np.ones(classes), 16).astype(np.float32)
    student = rng.dirichlet(np.ones(classes), 16).astype(np.float32)
    model = keras.Sequential([keras.Input((classes,)), keras.layers.Softmax()])
    model.compile(optimizer="adam", loss="categorical_crossentropy")
    compile_student(model, classes, Distillation(None, t, alpha))
    y_true = distillation_targets(labels, classes, soften(teacher, t))
    got = keras.ops.convert_to_numpy(model.loss(y_true, student))
    hard = -np.log(student[np.arange(16), labels])
    soft = -(soften(teacher, t) * np.log(soften(student, t))).sum(1) * t * t
    np.testing.assert_allclose(got, alpha * hard + (1 - alpha) * soft, rtol=1e-4)
    # A sigmoid's p is [1 - p, p]
    p = student[:, :1]
    two = np.concatenate([1 - p, p], 1)
    compile_student(model, 2, Distillation(None, t, alpha))
    y2 = distillation_targets(labels % 2, 2, soften(teacher[:, :2] / teacher[:, :2].sum(1, keepdims=True), t))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(model.loss(y2, p)),
                               alpha * -np.log(two[np.arange(16), labels % 2])
                               + (1 - alpha) * -(y2[:, 2:] * np.log(soften(two, t))).sum(1) * t * t, rtol=1e-4)


def test_teachers_it_cannot_learn_from_are_named(trained_repo, task_repo, tmp_path):
    teacher = Distillation(trained_repo / "topics-gru" / "1")
    cfg = teacher.teacher_config()
    other = TrainConfig.from_dict({**cfg.to_dict(), "dataset": "imdb"})
    with pytest.raises(ConfigError, match=r"student's dataset \('imdb'\) must be the teacher's \(the file"):
        teacher.check(other)
    with pytest.raises(ConfigError, match="validation_split"):
        teacher.check(TrainConfig.from_dict({**cfg.to_dict(), "validation_split": 0.3}))
    with pytest.raises(ConfigError, match="class_weight does not apply"):
        teacher.check(TrainConfig.from_dict({**cfg.to_dict(), "class_weight": "balanced"}))
    with pytest.raises(ConfigError, match="--alpha must be in"):
        Distillation(teacher.teacher, alpha=1.5).check(cfg)
    with pytest.raises(ConfigError, match="--temperature must be a finite number > 0"):
        Distillation(teacher.teacher, temperature=float("inf")).check(cfg)
    # The teacher's file is known by its bytes: a copy elsewhere is the same dataset, a changed one is not
    moved = tmp_path / "moved.csv"
    moved.write_bytes(Path(cfg.dataset).read_bytes())
    teacher.check(TrainConfig.from_dict({**cfg.to_dict(), "dataset": str(moved)}))
    moved.write_bytes(Path(cfg.dataset).read_bytes().replace(b"a", b"b", 1))
    with pytest.raises(ConfigError, match="is not the file the teacher was trained on"):
        teacher.check(TrainConfig.from_dict({**cfg.to_dict(), "dataset": str(moved)}))
    with pytest.raises(ConfigError, match=r"student's dataset \('\S+gone.csv'\) must be the teacher's"):
        teacher.check(TrainConfig.from_dict({**cfg.to_dict(), "dataset": str(tmp_path / "gone.csv")}))
    elsewhere = tmp_path / "teacher" / "1"  # a teacher whose training file is gone from where it was
    shutil.copytree(teacher.teacher, elsewhere)
    meta = json.loads((elsewhere / "metadata.json").read_text())
    meta["training"]["dataset"] = str(tmp_path / "gone.csv")
    (elsewhere / "metadata.json").write_text(json.dumps(meta))
    seal(elsewhere)
    gone = Distillation(elsewhere)
    with pytest.raises(ConfigError, match="gone.csv' is not here: pass --dataset"):
        gone.check(gone.teacher_config())
    gone.check(TrainConfig.from_dict({**gone.teacher_config().to_dict(), "dataset": cfg.dataset}))
    with pytest.raises(ConfigError, match="a teacher is a text classifier"):
        Distillation(task_repo / "waves-next" / "1").teacher_config()
    r = run_cli("distill", "--teacher", str(tmp_path / "nope"), "--epochs", "1")
    assert r.returncode == 2 and "--teacher" in r.stderr and "Traceback" not in r.stderr
