"""Keras run directory -> model package: ONNX conversion, the parity gate, metadata, atomic write.

Package layout (what the service validates): NAME/VERSION/{model.onnx, tokenizer.json, metadata.json,
curves.png, confusion.png, history.json}. The Keras model stays in the run directory: with its optimizer
state it is three times the size of the ONNX file, and serving never reads it.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from service.package import INPUT_NAME, NAME_RE, OUTPUT_NAME, PACKAGE_FORMAT
from service.tokenizer import Tokenizer, TokenizerSpec
from training.config import TrainConfig
from training.onnx_rnn import UnsupportedLayer, attach_recurrent_stack, is_recurrent, loop_ops
from training.train import RUN_FILES, load_dataset

OPSET = 17


class ExportError(Exception):
    """The export failed, e.g. the parity gate: the message carries the figures."""


def _widen(tf, p):
    """A sigmoid head's [N, 1] becomes [N, 2] = [1 - p, p], so every package outputs [N, classes]."""
    return tf.concat([1.0 - p, p], axis=1) if p.shape[-1] == 1 else p


def _tf2onnx(fn, spec):
    import tf2onnx

    proto, _ = tf2onnx.convert.from_function(fn, input_signature=spec, opset=OPSET)
    return proto


def convert_loop(model, maxlen: int):
    """The whole model through tf2onnx (recurrent layers become Loop subgraphs); kept for comparison."""
    import tensorflow as tf

    @tf.function
    def serve(input_ids):
        return {OUTPUT_NAME: _widen(tf, model(input_ids, training=False))}

    return _tf2onnx(serve, [tf.TensorSpec([None, maxlen], tf.int64, name=INPUT_NAME)])


def convert(model, maxlen: int):
    """Keras model -> ONNX with native RNN/GRU/LSTM nodes: input `input_ids` int64 [N, maxlen]
    ([N, T], any T <= maxlen, for masked models) and output `probabilities` float32 [N, classes]."""
    import onnx
    import tensorflow as tf

    layers = [layer for layer in model.layers if type(layer).__name__ != "InputLayer"]
    recurrent = [i for i, layer in enumerate(layers) if is_recurrent(layer)]
    if not recurrent or recurrent != list(range(recurrent[0], recurrent[-1] + 1)):
        raise ExportError("expected one contiguous stack of recurrent layers")
    front, stack, head = layers[:recurrent[0]], layers[recurrent[0]:recurrent[-1] + 1], layers[recurrent[-1] + 1:]
    masked = any(getattr(layer, "mask_zero", False) for layer in front)

    @tf.function
    def front_fn(input_ids):
        x = input_ids
        for layer in front:
            x = layer(x, training=False)
        return {"features": x}

    @tf.function
    def head_fn(rnn_out):
        x = rnn_out
        for layer in head:
            x = layer(x, training=False)
        return {OUTPUT_NAME: _widen(tf, x)}

    stack_out = [None, *stack[-1].output.shape[1:]]  # [N, D], or [N, T, D] before a pooling head
    front_proto = _tf2onnx(front_fn, [tf.TensorSpec([None, None if masked else maxlen], tf.int64, name=INPUT_NAME)])
    head_proto = _tf2onnx(head_fn, [tf.TensorSpec(stack_out, tf.float32, name="rnn_out")])
    try:
        body = attach_recurrent_stack(front_proto, "features", stack, masked, INPUT_NAME)
    except UnsupportedLayer as exc:
        raise ExportError(str(exc)) from exc
    merged = onnx.compose.merge_models(body, head_proto, io_map=[("rnn_out", "rnn_out")], prefix2="head/")
    for node in merged.graph.node:
        node.output[:] = [OUTPUT_NAME if o == f"head/{OUTPUT_NAME}" else o for o in node.output]
    merged.graph.output[0].name = OUTPUT_NAME
    loops = loop_ops(merged)
    if loops:
        raise ExportError(f"export left Loop/Scan nodes in the graph: {loops}")
    return merged


def parity_gate(model, onnx_bytes: bytes, x_keras: np.ndarray, x_onnx: np.ndarray, atol: float) -> dict:
    """ONNX Runtime must match Keras within atol and give identical labels, else ExportError.

    x_onnx holds the same texts as x_keras, padded the way the service pads for this package."""
    import onnxruntime as ort

    from training.models import predict_proba

    keras_p = predict_proba(model, x_keras)
    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    onnx_p = session.run([OUTPUT_NAME], {INPUT_NAME: x_onnx})[0]
    diff = float(np.abs(keras_p - onnx_p).max())
    disagree = int((keras_p.argmax(1) != onnx_p.argmax(1)).sum())
    report = {"examples": int(len(x_keras)), "max_abs_diff": diff, "label_disagreements": disagree, "atol": atol}
    if diff > atol or disagree:
        raise ExportError(f"parity gate failed on {len(x_keras)} test sequences: max |keras - onnx| = {diff:.3g} "
                          f"(allowed {atol:g}), {disagree} predicted labels differ")
    return report


def export_run(run_dir: str | Path, models_dir: str | Path, name: str, version: int = 1,
               data_dir: str | Path | None = None, parity_examples: int = 1000, atol: float = 1e-5,
               overwrite: bool = False, native: bool = True) -> Path:
    import keras
    import onnx

    run = Path(run_dir)
    missing = [f for f in RUN_FILES if not (run / f).is_file()]
    if missing:
        raise ExportError(f"{run} is not a training run directory: missing {', '.join(missing)}")
    if not NAME_RE.fullmatch(name or ""):
        raise ExportError(f"invalid model name {name!r}: the server serves names of letters, digits, '-', '_' "
                          "and single dots, not starting with a dot")
    target = Path(models_dir) / name / str(version)
    if target.exists() and not overwrite:
        raise ExportError(f"{target} exists; pass --overwrite or a new --version")
    cfg = TrainConfig.from_dict(json.loads((run / "config.json").read_text()))
    spec = TokenizerSpec.load(run / "tokenizer.json")
    labels = json.loads((run / "labels.json").read_text())
    metrics = json.loads((run / "metrics.json").read_text())
    model = keras.models.load_model(run / "model.keras")

    # Masked models ignore padding, so their packages pad after the tokens and only to the batch's
    # longest text; unmasked outputs depend on the exact padding, which stays as trained.
    dynamic = cfg.mask_zero and native
    package_spec = replace(spec, padding="post") if dynamic else spec
    proto = convert(model, cfg.maxlen) if native else convert_loop(model, cfg.maxlen)
    onnx_bytes = proto.SerializeToString()
    ds = load_dataset(cfg, data_dir)
    seqs = ds.x_test[:parity_examples]
    parity = parity_gate(model, onnx_bytes, Tokenizer(spec).pad(seqs),
                         Tokenizer(package_spec).pad(seqs, dynamic=dynamic), atol)

    Path(models_dir).mkdir(parents=True, exist_ok=True)
    # Staged beside the target and moved in whole: a server scanning models_dir never sees half a package
    # (it skips dot-directories).
    with tempfile.TemporaryDirectory(prefix=".export-", dir=models_dir) as tmp:
        stage = Path(tmp) / "pkg"
        stage.mkdir()
        (stage / "model.onnx").write_bytes(onnx_bytes)
        package_spec.save(stage / "tokenizer.json")
        for extra in ("curves.png", "confusion.png", "history.json"):
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
            "input": {"name": INPUT_NAME, "dtype": "int64", "shape": [None, None if dynamic else cfg.maxlen]},
            "dynamic_length": dynamic,
            "output": {"name": OUTPUT_NAME, "dtype": "float32", "shape": [None, len(labels)]},
            "maxlen": cfg.maxlen,
            "padding": package_spec.padding,
            "truncating": package_spec.truncating,
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
