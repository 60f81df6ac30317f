"""Recompute a package's test metrics through onnxruntime, from the package alone and the test split."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from rnnserve.service.core.package import read_package
from rnnserve.service.core.sequences import normalize
from rnnserve.service.core.tokenizer import Tokenizer
from rnnserve.training.config import TrainConfig
from rnnserve.training.metrics import classification_metrics, regression_metrics


def onnx_predict(package_dir: str | Path, x: np.ndarray, batch_size: int = 1024) -> np.ndarray:
    pkg = read_package(package_dir)
    names = pkg.metadata.input.name, pkg.metadata.output.name
    session = ort.InferenceSession(str(pkg.path / "model.onnx"), providers=["CPUExecutionProvider"])
    parts = [session.run([names[1]], {names[0]: x[i:i + batch_size]})[0] for i in range(0, len(x), batch_size)]
    return np.concatenate(parts)


def lm_step_probs(package_dir: str | Path, windows: np.ndarray) -> np.ndarray:
    """Next-character probabilities at every step [N, T, V], one character at a time with the state carried,
    as the service generates."""
    from rnnserve.training.export import softmax

    pkg = read_package(package_dir)
    session = ort.InferenceSession(str(pkg.path / "model.onnx"), providers=["CPUExecutionProvider"])
    states = {s["input"]: np.zeros((1, len(windows), s["shape"][2]), np.float32) for s in pkg.metadata.state}
    outputs = [pkg.metadata.output.name, *(s["output"] for s in pkg.metadata.state)]
    steps = []
    for t in range(windows.shape[1]):
        logits, *new = session.run(outputs, {pkg.metadata.input.name: windows[:, t:t + 1], **states})
        states = dict(zip(states, new))
        steps.append(softmax(logits))
    return np.stack(steps, axis=1)


def evaluate_package(package_dir: str | Path, data_dir: str | Path | None = None) -> dict:
    pkg = read_package(package_dir)
    training = {k: v for k, v in pkg.metadata.training.items() if k in TrainConfig.__dataclass_fields__}
    cfg = TrainConfig.from_dict(training)
    if cfg.task == "lm":
        from rnnserve.training.lm import lm_metrics, prepare_lm

        data = prepare_lm(cfg, data_dir)
        measured = lm_metrics(data.y_test, lm_step_probs(pkg.path, data.x_test))
    elif cfg.task == "sequences":
        from rnnserve.training.sequences import load_sequence_dataset

        ds = load_sequence_dataset(cfg.dataset, cfg.maxlen, cfg.features, cfg.label_column, cfg.regression,
                                   cfg.test_split)
        out = onnx_predict(pkg.path, normalize(ds.x_test, pkg.metadata.input.normalization))
        measured = classification_metrics(ds.y_test, out) if ds.labels else regression_metrics(ds.y_test, out)
    else:
        from rnnserve.training.train import load_dataset

        ds = load_dataset(cfg, data_dir)
        measured = classification_metrics(ds.y_test, onnx_predict(pkg.path, Tokenizer(pkg.tokenizer).pad(ds.x_test)))
    recorded = pkg.metadata.metrics["test"]
    return {"package": str(pkg.path), "measured": measured, "recorded": recorded,
            "delta": {k: round(measured[k] - recorded[k], 8) for k in measured if k != "examples"}}
