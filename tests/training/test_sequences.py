"""Numeric-sequence data: the CSV and NPZ layouts docs/tasks.md documents, their errors, and the synthetic waves."""

import numpy as np
import pytest

from rnnserve.training.data import DataError
from rnnserve.training.sequences import WAVE_KINDS, load_sequence_dataset, normalization, synthetic


def load(path, **kw):
    args = dict(length=4, features=2, label_column="label", regression=False, test_split=0.25) | kw
    return load_sequence_dataset(str(path), **args)


def test_csv_rows_are_step_major_with_the_target_column_anywhere(tmp_path):
    path = tmp_path / "s.csv"
    rows = ["a0,a1,label,b0,b1,c0,c1,d0,d1"] + [f"{i},{i + .5},{'up' if i % 2 else 'down'},1,2,3,4,5,6"
                                                for i in range(8)]
    path.write_text("\n".join(rows) + "\n")
    ds = load(path)
    assert ds.shape == (4, 2) and ds.labels == ["down", "up"] and ds.task == "sequence-classification"
    x = np.concatenate([ds.x_train, ds.x_test])
    assert sorted(x[:, 0, 0].tolist()) == list(range(8)) and (x[:, 3] == [5, 6]).all()
    path.with_name("r.csv").write_text("\n".join(["label,x0,x1"] + [f"{i / 10},{i},{-i}" for i in range(8)]))
    reg = load(path.with_name("r.csv"), regression=True, features=1)
    assert reg.task == "sequence-regression" and reg.shape == (2, 1) and reg.y_train.dtype == np.float32


@pytest.mark.parametrize("content,message", [
    ("x0,x1,x2\n1,2,3\n", "'label' column"),
    ("label,x0,x1,x2\na,1,2,3\nb,4,5,6\n", "do not make steps of 2"),
    ("label,x0,x1\na,1,oops\nb,4,5\n", "not a number"),
])
def test_csv_errors_name_the_problem(tmp_path, content, message):
    (tmp_path / "bad.csv").write_text(content)
    with pytest.raises(DataError, match=message):
        load(tmp_path / "bad.csv")


def test_npz_many_to_one_names_and_many_to_many(tmp_path):
    x = np.random.default_rng(0).normal(size=(20, 5, 3)).astype(np.float32)
    np.savez(tmp_path / "c.npz", x=x, y=np.arange(20) % 3, labels=np.array(["a", "b", "c"]))
    ds = load(tmp_path / "c.npz")
    assert ds.labels == ["a", "b", "c"] and ds.shape == (5, 3) and len(ds.x_train) == 15
    np.savez(tmp_path / "m.npz", x=x[..., 0], y=x[..., 1])
    many = load(tmp_path / "m.npz")
    assert many.per_step and many.shape == (5, 1) and many.task == "sequence-regression"
    np.savez(tmp_path / "bad.npz", x=x, y=np.zeros((20, 4)))
    with pytest.raises(DataError, match=r"\[N, T\] = \[N, 5\]"):
        load(tmp_path / "bad.npz")
    np.savez(tmp_path / "nox.npz", y=np.zeros(3))
    with pytest.raises(DataError, match="needs arrays 'x' and 'y'"):
        load(tmp_path / "nox.npz")


def test_synthetic_waves_are_reproducible_and_labelled():
    a, b = synthetic("waves-kind", 10, 0.2, 113), synthetic("waves-kind", 10, 0.2, 113)
    assert np.array_equal(a.x_train, b.x_train) and a.labels == WAVE_KINDS
    assert set(np.unique(a.y_train)) == {0, 1, 2, 3} and a.shape == (10, 1)
    steps = synthetic("waves-steps", 10, 0.2, 113)
    assert steps.per_step and steps.y_train.shape == (4000, 10)
    assert np.allclose(steps.x_train[:, 1:, 0], steps.y_train[:, :-1])  # each step's target is the next input
    stats = normalization(a.x_train)
    assert abs(stats["mean"][0]) < 0.1 and 0.5 < stats["std"][0] < 1.5
