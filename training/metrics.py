"""Metrics in numpy (accuracy, macro-F1, confusion matrix; regression errors) and their plots."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (np.asarray(y_true), np.asarray(y_pred)), 1)
    return cm


def classification_metrics(y_true: np.ndarray, probs: np.ndarray) -> dict:
    """Accuracy and macro-F1 over the classes present in y_true or predicted (as scikit-learn's default)."""
    y_pred = probs.argmax(axis=1)
    cm = confusion_matrix(y_true, y_pred, probs.shape[1])
    tp = np.diag(cm).astype(float)
    precision = np.divide(tp, cm.sum(axis=0), out=np.zeros_like(tp), where=cm.sum(axis=0) > 0)
    recall = np.divide(tp, cm.sum(axis=1), out=np.zeros_like(tp), where=cm.sum(axis=1) > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros_like(tp), where=precision + recall > 0)
    present = (cm.sum(axis=0) + cm.sum(axis=1)) > 0
    return {
        "accuracy": float((y_pred == y_true).mean()),
        "macro_f1": float(f1[present].mean()),
        "examples": int(len(y_true)),
    }


def regression_metrics(y_true: np.ndarray, pred: np.ndarray) -> dict:
    """Mean squared and absolute error and R² over every predicted value (every step, for per-step targets)."""
    y, p = np.asarray(y_true, np.float64).ravel(), np.asarray(pred, np.float64).ravel()
    total = float(((y - y.mean()) ** 2).sum())
    return {"mse": float(((y - p) ** 2).mean()), "mae": float(np.abs(y - p).mean()),
            "r2": 1.0 - float(((y - p) ** 2).sum()) / total if total > 0 else 0.0, "examples": int(len(y_true))}


def plot_history(history: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key in zip(axes, ("mae" if "mae" in history else "accuracy", "loss")):
        epochs = range(1, len(history.get(key, [])) + 1)
        ax.plot(epochs, history.get(key, []), "o-", label="train")
        if f"val_{key}" in history:
            ax.plot(epochs, history[f"val_{key}"], "s-", label="validation")
        ax.set(title=key, xlabel="epoch")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def plot_confusion(cm: np.ndarray, labels: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    size = max(4, len(labels) * 0.25)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    im = ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=7 if len(labels) > 10 else 10)
    ax.set_yticks(range(len(labels)), labels, fontsize=7 if len(labels) > 10 else 10)
    ax.set(xlabel="predicted", ylabel="true", title="test confusion matrix")
    if len(labels) <= 10:
        for (i, j), v in np.ndenumerate(cm):
            ax.text(j, i, str(v), ha="center", va="center", color="white" if v > cm.max() / 2 else "black")
    fig.colorbar(im)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
