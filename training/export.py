"""Keras run directory -> model package: tf2onnx conversion, the parity gate, metadata, atomic write.

Package layout (what the service validates): NAME/VERSION/{model.onnx, tokenizer.json, metadata.json,
curves.png, confusion.png, model.keras}. model.keras is kept so a package can be re-exported later.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from service.package import INPUT_NAME, OUTPUT_NAME, PACKAGE_FORMAT
from service.tokenizer import Tokenizer, TokenizerSpec
from training.config import TrainConfig
from training.train import RUN_FILES, load_dataset

OPSET = 17


class ExportError(Exception):
    """The export failed, e.g. the parity gate: the message carries the figures."""


def convert(model, maxlen: int):
    """Keras model -> ONNX ModelProto with input `input_ids` [N, maxlen] int64 and output
    `probabilities` [N, C] float32 (a sigmoid head is widened to [1 - p, p])."""
    import tensorflow as tf
    import tf2onnx

    binary = model.output_shape[-1] == 1

    @tf.function
    def serve(input_ids):
        p = model(input_ids, training=False)
        return {OUTPUT_NAME: tf.concat([1.0 - p, p], axis=1) if binary else p}

    spec = [tf.TensorSpec([None, maxlen], tf.int64, name=INPUT_NAME)]
    proto, _ = tf2onnx.convert.from_function(serve, input_signature=spec, opset=OPSET)
    return proto


def parity_gate(model, onnx_bytes: bytes, x: np.ndarray, atol: float) -> dict:
    """ONNX Runtime must match Keras within atol and give identical labels, else ExportError."""
    import onnxruntime as ort

    from training.models import predict_proba

    keras_p = predict_proba(model, x)
    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    onnx_p = session.run([OUTPUT_NAME], {INPUT_NAME: x})[0]
    diff = float(np.abs(keras_p - onnx_p).max())
    disagree = int((keras_p.argmax(1) != onnx_p.argmax(1)).sum())
    report = {"examples": int(len(x)), "max_abs_diff": diff, "label_disagreements": disagree, "atol": atol}
    if diff > atol or disagree:
        raise ExportError(f"parity gate failed on {len(x)} test sequences: max |keras - onnx| = {diff:.3g} "
                          f"(allowed {atol:g}), {disagree} predicted labels differ")
    return report


def export_run(run_dir: str | Path, models_dir: str | Path, name: str, version: int = 1,
               data_dir: str | Path | None = None, parity_examples: int = 1000, atol: float = 1e-5,
               overwrite: bool = False) -> Path:
    import keras
    import onnx

    run = Path(run_dir)
    missing = [f for f in RUN_FILES if not (run / f).is_file()]
    if missing:
        raise ExportError(f"{run} is not a training run directory: missing {', '.join(missing)}")
    if not name or "/" in name or name.startswith("."):
        raise ExportError(f"invalid model name {name!r}")
    target = Path(models_dir) / name / str(version)
    if target.exists() and not overwrite:
        raise ExportError(f"{target} exists; pass --overwrite or a new --version")
    cfg = TrainConfig.from_dict(json.loads((run / "config.json").read_text()))
    spec = TokenizerSpec.load(run / "tokenizer.json")
    labels = json.loads((run / "labels.json").read_text())
    metrics = json.loads((run / "metrics.json").read_text())
    model = keras.models.load_model(run / "model.keras")

    proto = convert(model, cfg.maxlen)
    onnx_bytes = proto.SerializeToString()
    ds = load_dataset(cfg, data_dir)
    x = Tokenizer(spec).pad(ds.x_test[:parity_examples])
    parity = parity_gate(model, onnx_bytes, x, atol)

    Path(models_dir).mkdir(parents=True, exist_ok=True)
    # Staged beside the target and moved in whole: a server scanning models_dir never sees half a package
    # (it skips dot-directories).
    with tempfile.TemporaryDirectory(prefix=".export-", dir=models_dir) as tmp:
        stage = Path(tmp) / "pkg"
        stage.mkdir()
        (stage / "model.onnx").write_bytes(onnx_bytes)
        spec.save(stage / "tokenizer.json")
        for extra in ("curves.png", "confusion.png", "model.keras", "history.json"):
            if (run / extra).is_file():
                shutil.copy2(run / extra, stage / extra)
        metadata = {
            "format": PACKAGE_FORMAT,
            "name": name,
            "version": version,
            "task": "text-classification",
            "labels": labels,
            "architecture": {k: getattr(cfg, k) for k in (
                "cell", "layers", "units", "embedding_dim", "bidirectional", "mask_zero", "dropout",
                "recurrent_dropout", "conv_filters", "conv_kernel", "pool_size", "dense_units")}
            | {"params": metrics["params"], "vocab_size": spec.vocab_size},
            "training": cfg.to_dict() | {"train_seconds": metrics["train_seconds"],
                                         "epochs_run": metrics["epochs_run"]},
            "dataset": {"name": ds.name, "train_examples": metrics["split_sizes"]["train"],
                        "test_examples": metrics["split_sizes"]["test"], "num_words": cfg.num_words,
                        "load_maxlen": cfg.load_maxlen, "test_split": cfg.test_split},
            "metrics": {"test": metrics["test"]},
            "input": {"name": INPUT_NAME, "dtype": "int64", "shape": [None, cfg.maxlen]},
            "output": {"name": OUTPUT_NAME, "dtype": "float32", "shape": [None, len(labels)]},
            "maxlen": cfg.maxlen,
            "padding": spec.padding,
            "truncating": spec.truncating,
            "onnx": {"file": "model.onnx", "sha256": hashlib.sha256(onnx_bytes).hexdigest(), "opset": OPSET,
                     "op_types": sorted({n.op_type for n in proto.graph.node})},
            "parity": parity,
            "versions": _library_versions(),
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        onnx.checker.check_model(proto)
        (stage / "metadata.json").write_text(json.dumps(metadata, indent=2))
        if target.exists():
            shutil.rmtree(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(stage), target)
    return target


def _library_versions() -> dict[str, str]:
    import keras
    import onnx
    import onnxruntime
    import tensorflow as tf
    import tf2onnx

    return {m.__name__: m.__version__ for m in (tf, keras, tf2onnx, onnx, onnxruntime)}
