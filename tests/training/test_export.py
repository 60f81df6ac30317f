"""Every architecture option trains on tiny real text, exports to ONNX and passes the parity gate."""

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from rnnserve.service.core.package import read_package
from rnnserve.service.core.tokenizer import Tokenizer
from tests.fixtures.build import train_and_export

VARIANTS = {
    "simple_rnn": dict(cell="simple_rnn"),
    "gru": dict(cell="gru"),
    "lstm": dict(cell="lstm"),
    "bi-simple_rnn": dict(cell="simple_rnn", bidirectional=True),
    "bi-lstm": dict(cell="lstm", bidirectional=True),
    "stacked-gru": dict(cell="gru", layers=2),
    "stacked-bi-lstm": dict(cell="lstm", layers=2, bidirectional=True),
    "masked-lstm": dict(cell="lstm", mask_zero=True),
    "masked-bi-gru": dict(cell="gru", mask_zero=True, bidirectional=True),
    "conv-lstm": dict(cell="lstm", conv_filters=8, conv_kernel=3, pool_size=2),
    "max-pooled-bi-gru": dict(cell="gru", bidirectional=True, layers=2, pooling="max"),
    "masked-max-mean-bi-lstm": dict(cell="lstm", bidirectional=True, mask_zero=True, pooling="max_mean",
                                    embedding_dropout=0.2),
    "max-mean-gru-adamw": dict(cell="gru", pooling="max_mean", optimizer="adamw", lr_schedule="cosine",
                               label_smoothing=0.1, class_weight="balanced"),
    "skipgram-ensemble": dict(cell="lstm", mask_zero=True, pooling="max_mean", pretrained_embeddings="skipgram",
                              ensemble=3),
    "head-dropout": dict(cell="simple_rnn", dense_units=8, head_dropout=0.3, dropout=0.2, recurrent_dropout=0.2,
                         optimizer="adam", padding="post", truncating="post"),
}


@pytest.mark.parametrize("variant", VARIANTS)
def test_architecture_exports_with_parity(variant, reviews_csv, tmp_path):
    path = train_and_export(reviews_csv, tmp_path / "models", variant, **VARIANTS[variant])
    pkg = read_package(path)  # validates files and sha256
    meta = pkg.metadata
    assert meta.parity["max_abs_diff"] <= 1e-5 and meta.parity["label_disagreements"] == 0
    assert meta.parity["examples"] == 60  # the whole test split of the tiny file
    assert meta.architecture["cell"] == VARIANTS[variant]["cell"]
    assert meta.onnx.opset >= 17
    native = {"simple_rnn": "RNN", "gru": "GRU", "lstm": "LSTM"}[VARIANTS[variant]["cell"]]
    ops = meta.onnx.op_types
    assert native in ops and "Loop" not in ops and "Scan" not in ops
    members = VARIANTS[variant].get("ensemble", 1)
    assert meta.architecture["ensemble"] == members and ("Mean" in ops) == (members > 1)
    domains = [o.domain for o in onnx.load(path / "model.onnx").opset_import]
    assert len(domains) == len(set(domains))  # merged graphs listed each domain twice
    masked = VARIANTS[variant].get("mask_zero", False)
    assert meta.dynamic_length is masked and meta.input.shape[1] == (None if masked else 40)
    assert meta.labels == ["negative", "positive"]
    for f in ("curves.png", "confusion.png", "history.json"):
        assert (path / f).is_file()
    assert not (path / "model.keras").exists()  # stays in the run directory
    # The ONNX model takes any batch size and gives probabilities that sum to one.
    session = ort.InferenceSession(str(path / "model.onnx"), providers=["CPUExecutionProvider"])
    x, _ = Tokenizer(pkg.tokenizer)(["a great film", "awful", "", "x " * 100], dynamic=masked)
    p = session.run(["probabilities"], {"input_ids": x})[0]
    assert p.shape == (4, 2) and np.allclose(p.sum(axis=1), 1, atol=1e-5)


def test_parity_gate_fails_on_a_mismatched_model(reviews_csv, tmp_path):
    import keras

    from rnnserve.training.export import ExportError, convert, parity_gate

    a = train_and_export(reviews_csv, tmp_path / "models", "a", cell="gru", seed=1)
    b = train_and_export(reviews_csv, tmp_path / "models", "b", cell="gru", seed=2)
    model_a = keras.models.load_model(tmp_path / "runs" / "a" / "model.keras")
    x = Tokenizer(read_package(a).tokenizer).pad([[1, 5, 9, 12]] * 50)
    with pytest.raises(ExportError, match=r"parity gate failed on 50 test sequences: max \|keras - onnx\|"):
        parity_gate(model_a, (b / "model.onnx").read_bytes(), x, x, atol=1e-5)
    # and the same model passes, while an impossible tolerance fails loudly
    ok = parity_gate(model_a, convert(model_a, 40).SerializeToString(), x, x, atol=1e-5)
    assert ok["label_disagreements"] == 0
    with pytest.raises(ExportError):
        parity_gate(model_a, convert(model_a, 40).SerializeToString(), x, x, atol=-1.0)
    # padding the masked way for an unmasked model changes its outputs: the gate notices
    post = Tokenizer(read_package(a).tokenizer).pad([[1, 5, 9, 12]] * 50, dynamic=True)
    with pytest.raises(ExportError):
        parity_gate(model_a, convert(model_a, 40).SerializeToString(), x, np.pad(post, ((0, 0), (0, 36))),
                    atol=1e-5)


def test_export_refuses_to_overwrite(reviews_csv, tmp_path):
    from rnnserve.training.export import ExportError, export_run

    path = train_and_export(reviews_csv, tmp_path / "models", "once", cell="gru")
    with pytest.raises(ExportError, match="exists"):
        export_run(tmp_path / "runs" / "once", tmp_path / "models", "once", 1)
    meta = json.loads((path / "metadata.json").read_text())
    assert meta["metrics"]["test"]["examples"] == 60


def test_masked_export_matches_keras_on_mixed_lengths(reviews_csv, tmp_path):
    """Keras sees maxlen pre-padded rows; onnxruntime sees the service's rows, padded after the tokens to
    the batch's longest text. Both must agree, with lengths from 1 to beyond maxlen in one batch."""
    import keras

    from rnnserve.training.models import predict_proba

    path = train_and_export(reviews_csv, tmp_path / "models", "masked", cell="gru", mask_zero=True,
                            bidirectional=True, layers=2)
    pkg = read_package(path)
    assert pkg.tokenizer.padding == "post"
    texts = ["", "good", "a great great film", "bad " * 10, "film " * 60]
    train_spec = Tokenizer(pkg.tokenizer.__class__(**{**vars(pkg.tokenizer), "padding": "pre"}))
    seqs = [Tokenizer(pkg.tokenizer).encode(t)[0] for t in texts]
    x_keras = train_spec.pad(seqs)
    x_onnx, _ = Tokenizer(pkg.tokenizer)(texts, dynamic=True)
    assert x_onnx.shape == (5, 40)
    short, _ = Tokenizer(pkg.tokenizer)(texts[:3], dynamic=True)
    assert short.shape == (3, 5)  # padded only to the longest of these
    session = ort.InferenceSession(str(path / "model.onnx"), providers=["CPUExecutionProvider"])
    keras_p = predict_proba(keras.models.load_model(tmp_path / "runs" / "masked" / "model.keras"), x_keras)
    assert np.abs(session.run(None, {"input_ids": x_onnx})[0] - keras_p).max() < 1e-5
    assert np.abs(session.run(None, {"input_ids": short})[0] - keras_p[:3]).max() < 1e-5


@pytest.mark.parametrize("change,eligible", [(None, True), ("bidirectional", False), ("conv", False),
                                             ("sequence_lens", False)])
def test_a_step_wise_graph_only_where_steps_depend_on_earlier_steps_alone(change, eligible):
    """stepwise_sequences on a small LSTM regression graph, and on the variants whose outputs at a step depend
    on later steps: a backward direction, a Conv front, masking (sequence_lens)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from rnnserve.training.onnx_rnn import stepwise_sequences

    rng = np.random.default_rng(0)
    dirs = 2 if change == "bidirectional" else 1
    inits = [numpy_helper.from_array(rng.normal(size=shape).astype(np.float32), name) for name, shape in (
        ("W", (dirs, 16, 1)), ("R", (dirs, 16, 4)), ("B", (dirs, 32)), ("k", (1, 1, 1)))]
    inits.append(numpy_helper.from_array(np.array([10], np.int32), "lens"))
    x = "x"
    nodes = [helper.make_node("Transpose", ["sequences"], ["x"], perm=[1, 0, 2])]
    if change == "conv":
        nodes = [helper.make_node("Transpose", ["sequences"], ["c"], perm=[0, 2, 1]),
                 helper.make_node("Conv", ["c", "k"], ["c2"]),
                 helper.make_node("Transpose", ["c2"], ["x"], perm=[2, 0, 1])]
    lens = "lens" if change == "sequence_lens" else ""
    nodes.append(helper.make_node("LSTM", [x, "W", "R", "B", lens], ["Y", "Y_h"], hidden_size=4,
                                  direction="bidirectional" if dirs == 2 else "forward"))
    nodes.append(helper.make_node("Identity", ["Y_h"], ["values"]))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("sequences", TensorProto.FLOAT,
                                                                         ["N", 10, 1])],
                              [helper.make_tensor_value_info("values", TensorProto.FLOAT, [dirs, "N", 4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    result = stepwise_sequences(model)
    assert (result is not None) == eligible
    if eligible:
        step, states = result
        assert [i.name for i in step.graph.input] == ["sequences", "state_in_0", "cell_in_0"]
        assert [s["output"] for s in states] == ["state_out_0", "cell_out_0"]
        onnx.checker.check_model(step)


def test_export_refuses_names_the_server_would_refuse(trained_repo, tmp_path):
    from rnnserve.training.export import ExportError, export_run

    for name in ("bad\nname", "a..b", ".hidden", "x/y"):
        with pytest.raises(ExportError, match="invalid model name"):
            export_run(trained_repo.parent / "runs" / "sentiment-lstm", tmp_path, name, 1)
