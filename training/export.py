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
from datetime import UTC, datetime
from pathlib import Path
from typing import NamedTuple

import numpy as np
import onnx
from onnx import helper

from rnnserve.service.core.package import (
    INPUT_NAME,
    LOGITS_OUTPUT,
    NAME_RE,
    OUTPUT_NAME,
    PACKAGE_FORMAT,
    SEQUENCE_INPUT,
    VALUES_OUTPUT,
    Task,
    parse_metadata,
    seal,
)
from rnnserve.service.core.tokenizer import Tokenizer, TokenizerSpec
from rnnserve.training.config import TrainConfig
from rnnserve.training.distill import DISTILLATION_FILE
from rnnserve.training.layers import MaxMeanPooling
from rnnserve.training.onnx_rnn import (
    POOLINGS,
    UnsupportedLayer,
    attach_recurrent_stack,
    is_recurrent,
    loop_ops,
    stepwise_lm,
    stepwise_sequences,
    unique_opsets,
)
from rnnserve.training.profiling import training_texts, write_profile
from rnnserve.training.train import load_dataset, member_files, run_files

OPSET = 17


class Packaged(NamedTuple):
    """A task's packager's result: the ONNX model, the package's other files (name -> text or bytes) and the
    task's metadata.json sections, which export_run merges with the run's."""

    proto: onnx.ModelProto
    files: dict[str, str | bytes]
    described: dict


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


def convert(model, maxlen: int, features: int | None = None, output: str = OUTPUT_NAME, logits: bool = False):
    """Keras model -> ONNX with native RNN/GRU/LSTM nodes. Text: input `input_ids` int64 [N, maxlen] ([N, T],
    any T <= maxlen, for masked models); numeric sequences (features set): `sequences` float32 [N, maxlen,
    features]. Output `probabilities` float32 [N, classes], or `values` [N, 1] / [N, T, 1]. logits: the last
    layer gives logits, to which the graph applies a sigmoid (one unit) or a softmax. A TextVectorization layer
    is left out: the graph starts at its ids (the package's tokenizer reproduces the layer)."""
    import tensorflow as tf

    layers = [layer for layer in model.layers if type(layer).__name__ not in ("InputLayer", "TextVectorization")]
    recurrent = [i for i, layer in enumerate(layers) if is_recurrent(layer)]
    if not recurrent or recurrent != list(range(recurrent[0], recurrent[-1] + 1)):
        raise ExportError("expected one contiguous stack of recurrent layers")
    front, stack, head = layers[:recurrent[0]], layers[recurrent[0]:recurrent[-1] + 1], layers[recurrent[-1] + 1:]
    masked = any(getattr(layer, "mask_zero", False) for layer in front)
    # Poolings that read the mask are native too (tf2onnx's head never sees the mask).
    pooling = None
    if head and isinstance(head[0], MaxMeanPooling):
        pooling = "max_mean"
    elif head and masked and type(head[0]).__name__ == "GlobalAveragePooling1D":
        pooling = "mean"
    if pooling:
        head = head[1:]

    @tf.function
    def front_fn(x):
        for layer in front:
            x = layer(x, training=False)
        return {"features": x}

    @tf.function
    def head_fn(rnn_out):
        x = rnn_out
        for layer in head:
            x = layer(x, training=False)
        if logits:
            x = tf.sigmoid(x) if x.shape[-1] == 1 else tf.nn.softmax(x)
        return {output: _widen(tf, x) if output == OUTPUT_NAME else x}

    stack_out = [None, *stack[-1].output.shape[1:]]  # [N, D], or [N, T, D] before a pooling head
    if pooling:
        stack_out = [None, len(POOLINGS[pooling]) * stack_out[-1]]
    if features is None:
        input_name, input_spec = INPUT_NAME, tf.TensorSpec([None, None if masked else maxlen], tf.int64)
    else:
        input_name, input_spec = SEQUENCE_INPUT, tf.TensorSpec([None, maxlen, features], tf.float32)
    front_proto = _tf2onnx(front_fn, [tf.TensorSpec(input_spec.shape, input_spec.dtype, name=input_name)])
    head_proto = _tf2onnx(head_fn, [tf.TensorSpec(stack_out, tf.float32, name="rnn_out")])
    try:
        body = attach_recurrent_stack(front_proto, "features", stack, masked, input_name, pooling=pooling)
    except UnsupportedLayer as exc:
        raise ExportError(str(exc)) from exc
    merged = onnx.compose.merge_models(body, head_proto, io_map=[("rnn_out", "rnn_out")], prefix2="head/")
    for node in merged.graph.node:
        node.output[:] = [output if o == f"head/{output}" else o for o in node.output]
    merged.graph.output[0].name = output
    loops = loop_ops(merged)
    if loops:
        raise ExportError(f"export left Loop/Scan nodes in the graph: {loops}")
    return unique_opsets(merged)


def average(members: list[onnx.ModelProto]) -> onnx.ModelProto:
    """Ensemble members (each input_ids -> probabilities) -> one graph: one input, the members side by side,
    their probabilities averaged (ONNX Mean)."""
    if len(members) == 1:
        return members[0]
    nodes, inits = [], []
    for i, member in enumerate(members):
        prefixed = onnx.compose.add_prefix(member, f"m{i}/")
        for node in prefixed.graph.node:
            node.input[:] = [INPUT_NAME if name == f"m{i}/{INPUT_NAME}" else name for name in node.input]
        nodes += prefixed.graph.node
        inits += prefixed.graph.initializer
    nodes.append(helper.make_node("Mean", [f"m{i}/{OUTPUT_NAME}" for i in range(len(members))], [OUTPUT_NAME]))
    first = members[0].graph
    graph = helper.make_graph(nodes, "ensemble", list(first.input), list(first.output), inits)
    return helper.make_model(graph, opset_imports=members[0].opset_import, ir_version=members[0].ir_version)


def parity_gate(models, onnx_bytes: bytes, x_keras: np.ndarray, x_onnx: np.ndarray, atol: float,
                input_name: str = INPUT_NAME, output: str = OUTPUT_NAME) -> dict:
    """ONNX Runtime must match Keras (a model, or an ensemble's list) within atol and, for probabilities, give
    identical labels, else ExportError. x_onnx holds the same inputs as x_keras, padded the way the service
    pads for this package."""
    import onnxruntime as ort

    from rnnserve.training.models import predict_proba, predict_values

    classify = output == OUTPUT_NAME
    keras_out = predict_proba(models, x_keras) if classify else predict_values(models, x_keras)
    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    onnx_out = session.run([output], {input_name: x_onnx})[0]
    return _parity_report(keras_out, onnx_out, atol, classify)


def _parity_report(keras_out: np.ndarray, onnx_out: np.ndarray, atol: float, labels: bool) -> dict:
    diff = float(np.abs(keras_out - onnx_out).max())
    disagree = int((keras_out.argmax(-1) != onnx_out.argmax(-1)).sum()) if labels else 0
    report = {"examples": int(len(keras_out)), "max_abs_diff": diff, "label_disagreements": disagree, "atol": atol}
    if diff > atol or disagree:
        raise ExportError(f"parity gate failed on {len(keras_out)} test sequences: max |keras - onnx| = {diff:.3g} "
                          f"(allowed {atol:g}), {disagree} predicted labels differ")
    return report


def lm_parity_gate(model, onnx_bytes: bytes, windows: np.ndarray, atol: float) -> dict:
    """A language model's step-wise graph must give Keras's next-character probabilities at every step, both
    fed a window at once and fed one character at a time with its state carried, else ExportError."""
    import onnxruntime as ort

    from rnnserve.training.models import predict_proba

    keras_p = predict_proba(model, windows)  # [N, T, V]
    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    state = {i.name: np.zeros([d if isinstance(d, int) else len(windows) for d in i.shape], np.float32)
             for i in session.get_inputs() if i.name != INPUT_NAME}
    outputs = [o.name for o in session.get_outputs()]
    whole = session.run([LOGITS_OUTPUT], {INPUT_NAME: windows, **state})[0]
    steps = []
    for t in range(windows.shape[1]):
        logits, *states = session.run(outputs, {INPUT_NAME: windows[:, t:t + 1], **state})
        state = dict(zip(state, states))  # outputs give the states in the inputs' order
        steps.append(softmax(logits))
    onnx_p = np.concatenate([np.stack(steps, axis=1), softmax(whole)[:, None]], axis=1)
    # Probabilities within atol is the check: the most probable character of a near tie may differ by rounding,
    # and sampling does not take the most probable one anyway.
    return _parity_report(np.concatenate([keras_p, keras_p[:, -1:]], axis=1), onnx_p, atol, labels=False)


def softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def export_run(run_dir: str | Path, models_dir: str | Path, name: str, version: int = 1,
               data_dir: str | Path | None = None, parity_examples: int = 1000, atol: float = 1e-5,
               overwrite: bool = False, native: bool = True) -> Path:
    import keras

    run = Path(run_dir)
    if not (run / "config.json").is_file():
        raise ExportError(f"{run} is not a training run directory: missing config.json")
    cfg = TrainConfig.from_dict(json.loads((run / "config.json").read_text()))
    missing = [f for f in run_files(cfg) if not (run / f).is_file()]
    if missing:
        raise ExportError(f"{run} is not a complete training run: missing {', '.join(missing)}")
    check_target(models_dir, name, version, overwrite)
    metrics = json.loads((run / "metrics.json").read_text())
    if "test" not in metrics:
        raise ExportError(f"{run} was trained with --validation-only: a package reports its test figures; "
                          "train the chosen configuration again without it")
    if cfg.task != "text" and not native:
        raise ExportError("only text classifiers export through tf2onnx's Loop graphs (for comparison)")
    models = [keras.models.load_model(run / f) for f in member_files(cfg)]
    package = {"text": _text_package, "sequences": _sequence_package, "lm": _lm_package}[cfg.task]
    proto, files, described = package(cfg, run, models, data_dir=data_dir, parity_examples=parity_examples,
                                      atol=atol, native=native)
    metadata = {
        **described,
        "architecture": {k: getattr(cfg, k) for k in (
            "cell", "layers", "units", "embedding_dim", "bidirectional", "mask_zero", "dropout",
            "recurrent_dropout", "conv_filters", "conv_kernel", "pool_size", "pooling", "dense_units",
            "pretrained_embeddings", "ensemble")} | {"params": metrics["params"]} | described["architecture"],
        "training": cfg.to_dict() | {"train_seconds": metrics["train_seconds"], "epochs_run": metrics["epochs_run"]},
        "dataset": {"name": Path(cfg.dataset).name, "train_examples": metrics["split_sizes"]["train"],
                    "test_examples": metrics["split_sizes"]["test"], "test_split": cfg.test_split}
        | ({"sha256": metrics["dataset_sha256"]} if "dataset_sha256" in metrics else {}) | described["dataset"],
        "metrics": {k: metrics[k] for k in ("validation", "test") if k in metrics},
        "maxlen": cfg.maxlen,
    }
    if (run / DISTILLATION_FILE).is_file():
        metadata["distillation"] = json.loads((run / DISTILLATION_FILE).read_text())
    extras = [run / f for f in ("curves.png", "confusion.png", "history.json") if (run / f).is_file()]
    reference = training_texts(cfg.dataset, data_dir, cfg.text_column, cfg.test_split) if cfg.task == "text" else None
    return write_package(models_dir, name, version, proto, files, metadata, library_versions(), extras,
                         overwrite=overwrite, reference=reference)


def check_target(models_dir: str | Path, name: str, version: int, overwrite: bool) -> Path:
    """The package directory MODELS/NAME/VERSION, or ExportError: a name the server would refuse, or a version
    that exists (without overwrite). Checked before the slow work."""
    if not NAME_RE.fullmatch(name or ""):
        raise ExportError(f"invalid model name {name!r}: the server serves names of letters, digits, '-', '_' "
                          "and single dots, not starting with a dot")
    target = Path(models_dir) / name / str(version)
    if target.exists() and not overwrite:
        raise ExportError(f"{target} exists; pass --overwrite or a new --version")
    return target


def write_package(models_dir: str | Path, name: str, version: int, proto: onnx.ModelProto,
                  files: dict[str, str | bytes], metadata: dict, versions: dict[str, str], extras: list[Path] = (),
                  overwrite: bool = False, reference: tuple[list[str], str] | None = None) -> Path:
    """Write MODELS/NAME/VERSION: model.onnx, the files (name -> text or bytes), copies of `extras`, and
    metadata.json (`metadata` plus the format, name, version, the ONNX file's facts, library versions and the
    time), checked against the format the service reads before anything is written. reference: (texts, where
    they came from) for a text classifier's drift profile (profile.json, training/profiling.py)."""
    target = check_target(models_dir, name, version, overwrite)
    onnx_bytes = proto.SerializeToString()
    metadata = {"format": PACKAGE_FORMAT, "name": name, "version": version, **metadata,
                "onnx": {"file": "model.onnx", "sha256": hashlib.sha256(onnx_bytes).hexdigest(),
                         "opset": next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None),
                         "op_types": sorted({n.op_type for n in proto.graph.node})},
                "versions": versions, "created_at": datetime.now(UTC).isoformat(timespec="seconds")}
    onnx.checker.check_model(proto)
    parse_metadata(metadata)  # the format the service reads: a wrong field fails here, named
    Path(models_dir).mkdir(parents=True, exist_ok=True)
    # Staged beside the target and moved in whole: a server scanning models_dir never sees half a package
    # (it skips dot-directories).
    with tempfile.TemporaryDirectory(prefix=".export-", dir=models_dir) as tmp:
        stage = Path(tmp) / "pkg"
        stage.mkdir()
        (stage / "model.onnx").write_bytes(onnx_bytes)
        for filename, content in files.items():
            if isinstance(content, bytes):
                (stage / filename).write_bytes(content)
            else:
                (stage / filename).write_text(content, encoding="utf-8")
        for extra in extras:
            shutil.copy2(extra, stage / extra.name)
        (stage / "metadata.json").write_text(json.dumps(metadata, indent=2))
        if reference is not None:
            write_profile(stage, *reference)
        seal(stage)
        if target.exists():
            shutil.rmtree(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(stage), target)
    return target


def _text_package(cfg: TrainConfig, run: Path, models: list, *, data_dir: str | Path | None,
                  parity_examples: int, atol: float, native: bool) -> Packaged:
    spec = TokenizerSpec.load(run / "tokenizer.json")
    labels = json.loads((run / "labels.json").read_text())
    # Masked models ignore padding, so their packages pad after the tokens and only to the batch's
    # longest text; unmasked outputs depend on the exact padding, which stays as trained.
    dynamic = cfg.mask_zero and native
    package_spec = replace(spec, padding="post") if dynamic else spec
    proto = average([convert(m, cfg.maxlen) if native else convert_loop(m, cfg.maxlen) for m in models])
    ds = load_dataset(cfg, data_dir)
    seqs = ds.x_test[:parity_examples]
    parity = parity_gate(models, proto.SerializeToString(), Tokenizer(spec).pad(seqs),
                         Tokenizer(package_spec).pad(seqs, dynamic=dynamic), atol)
    return Packaged(proto, {"tokenizer.json": package_spec.to_json()}, {
        "task": Task.TEXT_CLASSIFICATION,
        "labels": labels,
        "architecture": {"vocab_size": spec.vocab_size},
        "dataset": {"name": ds.name, "num_words": cfg.num_words, "load_maxlen": cfg.load_maxlen},
        "input": {"name": INPUT_NAME, "dtype": "int64", "shape": [None, None if dynamic else cfg.maxlen]},
        "dynamic_length": dynamic,
        "output": {"name": OUTPUT_NAME, "dtype": "float32", "shape": [None, len(labels)]},
        "padding": package_spec.padding,
        "truncating": package_spec.truncating,
        "parity": parity,
    })


def _sequence_package(cfg: TrainConfig, run: Path, models: list, *, data_dir: str | Path | None,
                      parity_examples: int, atol: float, native: bool) -> Packaged:
    from rnnserve.training.train import prepare_sequences

    spec = json.loads((run / "input.json").read_text())
    labels = json.loads((run / "labels.json").read_text())
    steps, features = spec["shape"]
    output = OUTPUT_NAME if labels else VALUES_OUTPUT
    proto = average([convert(m, steps, features, output) for m in models])
    x = prepare_sequences(cfg).x_test[:parity_examples]  # normalised as the service normalises
    parity = parity_gate(models, proto.SerializeToString(), x, x, atol, SEQUENCE_INPUT, output)
    out_shape = [None, len(labels)] if labels else [None, steps, 1] if spec["per_step"] else [None, 1]
    files, stepwise = {}, {}
    if step := stepwise_sequences(proto):  # the V2 sequence extension's graph, where the model allows one
        files["stepwise.onnx"] = step[0].SerializeToString()
        parity["stepwise"] = stepwise_gate(proto, step[0], step[1], x[:200], output, atol)
        stepwise = {"stepwise": "stepwise.onnx", "state": step[1]}
    return Packaged(proto, files, stepwise | {
        "task": spec["task"],
        "labels": labels,
        "architecture": {},
        "dataset": {},
        "input": {"name": SEQUENCE_INPUT, "dtype": "float32", "shape": [None, steps, features],
                  "normalization": spec["normalization"]},
        "output": {"name": output, "dtype": "float32", "shape": out_shape},
        "parity": parity,
    })


def stepwise_gate(whole: onnx.ModelProto, step: onnx.ModelProto, states: list[dict], x: np.ndarray, output: str,
                  atol: float) -> dict:
    """The step-wise graph fed each sequence of x [N, T, F] in chunks of 1, 2, 3... steps, each from the state
    the chunk before left, against the whole graph on whole sequences: the last chunk's output (last-step
    models) or every chunk's outputs in order (per-step models) within atol, else ExportError."""
    import onnxruntime as ort

    run_whole = ort.InferenceSession(whole.SerializeToString(), providers=["CPUExecutionProvider"])
    run_step = ort.InferenceSession(step.SerializeToString(), providers=["CPUExecutionProvider"])
    expected = run_whole.run([output], {SEQUENCE_INPUT: x})[0]
    state = {s["input"]: np.zeros((1, len(x), s["shape"][2]), np.float32) for s in states}
    names = [output, *(s["output"] for s in states)]
    outs, start, size = [], 0, 1
    while start < x.shape[1]:
        out, *after = run_step.run(names, {SEQUENCE_INPUT: x[:, start:start + size], **state})
        outs.append(out)
        state = {s["input"]: value for s, value in zip(states, after)}
        start, size = start + size, size + 1
    got = np.concatenate(outs, axis=1) if expected.ndim == 3 else outs[-1]
    diff = float(np.abs(got - expected).max())
    if diff > atol:
        raise ExportError(f"step-wise graph: |chunks - whole| = {diff:.3g} > {atol:g} on {len(x)} sequences")
    return {"examples": len(x), "chunks": len(outs), "max_abs_diff": diff, "atol": atol}


def _lm_package(cfg: TrainConfig, run: Path, models: list, *, data_dir: str | Path | None,
                parity_examples: int, atol: float, native: bool) -> Packaged:
    from rnnserve.training.lm import prepare_lm

    spec = TokenizerSpec.load(run / "tokenizer.json")
    (model,) = models
    try:
        proto = stepwise_lm(model, OPSET)
    except UnsupportedLayer as exc:
        raise ExportError(str(exc)) from exc
    windows = prepare_lm(cfg, data_dir).x_test[: min(parity_examples, 100)]  # x every step: 10,000 checks
    parity = lm_parity_gate(model, proto.SerializeToString(), windows, atol)
    states = [{"input": i.name, "output": o.name, "shape": [d.dim_value or None for d in
                                                           i.type.tensor_type.shape.dim]}
              for i, o in zip(proto.graph.input[1:], proto.graph.output[1:])]
    return Packaged(proto, {"tokenizer.json": spec.to_json()}, {
        "task": Task.TEXT_GENERATION,
        "labels": [],
        "architecture": {"vocab_size": spec.vocab_size},
        "dataset": {"characters": len(spec.words)},
        "input": {"name": INPUT_NAME, "dtype": "int64", "shape": [None, None]},
        "output": {"name": LOGITS_OUTPUT, "dtype": "float32", "shape": [None, spec.vocab_size]},
        "state": states,
        "parity": parity,
    })


def library_versions() -> dict[str, str]:
    import keras
    import onnxruntime
    import tensorflow as tf
    import tf2onnx

    return {m.__name__: m.__version__ for m in (tf, keras, tf2onnx, onnx, onnxruntime)}
