"""Recompute a package's test metrics through onnxruntime, from the tokenized test split."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from service.package import INPUT_NAME, OUTPUT_NAME, read_package
from service.tokenizer import Tokenizer
from training.config import TrainConfig
from training.metrics import classification_metrics
from training.train import load_dataset


def onnx_predict(package_dir: str | Path, x: np.ndarray, batch_size: int = 1024) -> np.ndarray:
    session = ort.InferenceSession(str(Path(package_dir) / "model.onnx"), providers=["CPUExecutionProvider"])
    parts = [session.run([OUTPUT_NAME], {INPUT_NAME: x[i:i + batch_size]})[0] for i in range(0, len(x), batch_size)]
    return np.concatenate(parts)


def evaluate_package(package_dir: str | Path, data_dir: str | Path | None = None) -> dict:
    pkg = read_package(package_dir)
    training = {k: v for k, v in pkg.metadata["training"].items() if k in TrainConfig.__dataclass_fields__}
    cfg = TrainConfig.from_dict(training)
    ds = load_dataset(cfg, data_dir)
    probs = onnx_predict(pkg.path, Tokenizer(pkg.tokenizer).pad(ds.x_test))
    measured = classification_metrics(ds.y_test, probs)
    recorded = pkg.metadata["metrics"]["test"]
    return {"package": str(pkg.path), "measured": measured, "recorded": recorded,
            "accuracy_delta_points": round(100 * (measured["accuracy"] - recorded["accuracy"]), 4)}
