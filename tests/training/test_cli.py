"""The training CLI: help for every subcommand, clear errors (exit 2, no traceback), and a real run."""

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT


def run_cli(*args, env=None):
    # Without TF_CPP_MIN_LOG_LEVEL (CI sets it): the CLI itself must keep TensorFlow's C++ lines quiet.
    base = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    return subprocess.run([sys.executable, "-m", "rnnserve.training", *args], cwd=ROOT, capture_output=True, text=True,
                          env={**base, **(env or {})}, timeout=600)


@pytest.mark.parametrize("sub", ["train", "distill", "reproduce", "test", "export", "evaluate", "quantize", "import",
                                 "presets"])
def test_help(sub):
    r = run_cli(sub, "--help")
    assert r.returncode == 0 and "usage:" in r.stdout


@pytest.mark.parametrize("args,message", [
    (["train", "--preset", "imdb-lstm-tutorial", "--data-dir", "/nonexistent/data"], "does not exist"),
    (["train", "--preset", "no-such-preset"], "unknown preset 'no-such-preset'"),
    (["train"], "give --preset NAME or --dataset"),
    (["train", "--dataset", "imdb", "--cell", "transformer"], "cell must be"),
    (["export", "/nonexistent/run", "--name", "x"], "not a training run directory"),
])
def test_bad_input_gives_message_not_traceback(args, message):
    r = run_cli(*args)
    assert r.returncode == 2
    assert message in r.stderr
    assert "Traceback" not in r.stderr


def test_malformed_csv(tmp_path):
    (tmp_path / "bad.csv").write_text("review,stars\nfine,5\n")
    r = run_cli("train", "--dataset", str(tmp_path / "bad.csv"), "--out", str(tmp_path / "run"))
    assert r.returncode == 2 and "no column 'text'; columns are ['review', 'stars']" in r.stderr
    assert "Traceback" not in r.stderr


def test_train_export_evaluate_end_to_end(reviews_csv, tmp_path):
    models = tmp_path / "models"
    r = run_cli("train", "--dataset", str(reviews_csv), "--cell", "gru", "--units", "8", "--embedding-dim", "8",
                "--maxlen", "40", "--epochs", "2", "--early-stopping-patience", "1", "--out", str(tmp_path / "run"),
                "--export", "cli-gru", "--models-dir", str(models))
    assert r.returncode == 0, r.stderr
    assert "exported" in r.stdout
    assert not any(marker in r.stderr for marker in ("cudart_stub", "oneDNN", "I0000", "E0000")), r.stderr[-2000:]
    assert (tmp_path / "run" / "curves.png").is_file()
    r = run_cli("evaluate", str(models / "cli-gru" / "1"))
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    assert result["measured"]["examples"] == 60
    assert abs(result["delta"]["accuracy"]) < 1e-4


def test_reproduce_trains_each_preset_with_each_seed(data_dir, tmp_path):
    out = tmp_path / "reproduce"
    r = run_cli("reproduce", "reuters-tutorial-simple-rnn", "--seeds", "2", "--epochs", "1", "--units", "8",
                "--data-dir", str(data_dir), "--out", str(out))
    assert r.returncode == 0, r.stderr[-2000:]
    (row,) = json.loads((out / "reproduce.json").read_text())["results"]
    assert row["preset"] == "reuters-tutorial-simple-rnn" and row["seeds"] == [1337, 1338]
    assert row["reported"] == 0.7496 and len(row["accuracies"]) == 2
    assert row["min"] <= row["mean"] <= row["max"] and row["sd"] >= 0
    for seed, best in zip(row["seeds"], row["best_validation"]):
        run_dir = out / row["preset"] / f"seed-{seed}"
        assert json.loads((run_dir / "config.json").read_text())["seed"] == seed
        assert best == json.loads((run_dir / "history.json").read_text())["val_accuracy"][0]  # one epoch
    assert row["best_validation_mean"] == sum(row["best_validation"]) / 2
    assert "| reuters-tutorial-simple-rnn | 2 |" in (out / "reproduce.md").read_text()
    assert run_cli("reproduce", "no-such-preset").returncode == 2


def test_validation_only_run_is_tested_once_then_exported(reviews_csv, tmp_path):
    run, models = tmp_path / "run", tmp_path / "models"
    r = run_cli("train", "--dataset", str(reviews_csv), "--units", "8", "--embedding-dim", "8", "--maxlen", "40",
                "--epochs", "1", "--validation-only", "--out", str(run))
    assert r.returncode == 0, r.stderr
    metrics = json.loads((run / "metrics.json").read_text())
    assert "validation" in metrics and "test" not in metrics and not (run / "confusion.png").exists()
    r = run_cli("export", str(run), "--name", "v", "--models-dir", str(models))
    assert r.returncode == 2 and "--validation-only" in r.stderr
    r = run_cli("test", str(run))
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["test"]["examples"] == 60 and (run / "confusion.png").is_file()
    assert run_cli("test", str(run)).returncode == 2  # the test split is touched once
    assert run_cli("export", str(run), "--name", "v", "--models-dir", str(models)).returncode == 0
    assert run_cli("train", "--dataset", str(reviews_csv), "--validation-only", "--export", "x").returncode == 2


def test_an_existing_package_is_refused_before_training_and_replaced_with_overwrite(reviews_csv, tmp_path):
    args = ["train", "--dataset", str(reviews_csv), "--units", "4", "--embedding-dim", "4", "--maxlen", "20",
            "--epochs", "1", "--num-words", "500", "--models-dir", str(tmp_path / "models"), "--export", "m"]
    assert run_cli(*args, "--out", str(tmp_path / "r1")).returncode == 0
    first = json.loads((tmp_path / "models" / "m" / "1" / "metadata.json").read_text())["created_at"]
    r = run_cli(*args, "--out", str(tmp_path / "r2"))
    assert r.returncode == 2 and "exists; pass --overwrite" in r.stderr
    assert not (tmp_path / "r2").exists()  # refused before any training
    r = run_cli(*args, "--out", str(tmp_path / "r3"), "--overwrite", "--seed", "7")
    assert r.returncode == 0, r.stderr
    meta = json.loads((tmp_path / "models" / "m" / "1" / "metadata.json").read_text())
    assert meta["training"]["seed"] == 7 and meta["created_at"] >= first
