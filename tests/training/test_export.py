"""Every architecture option trains on tiny real text, exports to ONNX and passes the parity gate."""

import json

import numpy as np
import onnxruntime as ort
import pytest

from service.package import read_package
from service.tokenizer import Tokenizer
from tests.conftest import train_and_export

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
    "head-dropout": dict(cell="simple_rnn", dense_units=8, head_dropout=0.3, dropout=0.2, recurrent_dropout=0.2,
                         optimizer="adam", padding="post", truncating="post"),
}


@pytest.mark.parametrize("variant", VARIANTS)
def test_architecture_exports_with_parity(variant, reviews_csv, tmp_path):
    path = train_and_export(reviews_csv, tmp_path / "models", variant, **VARIANTS[variant])
    pkg = read_package(path)  # validates files and sha256
    meta = pkg.metadata
    assert meta["parity"]["max_abs_diff"] <= 1e-5 and meta["parity"]["label_disagreements"] == 0
    assert meta["parity"]["examples"] == 60  # the whole test split of the tiny file
    assert meta["architecture"]["cell"] == VARIANTS[variant]["cell"]
    assert meta["onnx"]["opset"] >= 17
    assert meta["labels"] == ["negative", "positive"]
    for f in ("curves.png", "confusion.png", "model.keras"):
        assert (path / f).is_file()
    # The ONNX model takes any batch size and gives probabilities that sum to one.
    session = ort.InferenceSession(str(path / "model.onnx"), providers=["CPUExecutionProvider"])
    x, _ = Tokenizer(pkg.tokenizer)(["a great film", "awful", "", "x " * 100])
    p = session.run(["probabilities"], {"input_ids": x})[0]
    assert p.shape == (4, 2) and np.allclose(p.sum(axis=1), 1, atol=1e-5)


def test_parity_gate_fails_on_a_mismatched_model(reviews_csv, tmp_path):
    import keras

    from training.export import ExportError, convert, parity_gate

    a = train_and_export(reviews_csv, tmp_path / "models", "a", cell="gru", seed=1)
    b = train_and_export(reviews_csv, tmp_path / "models", "b", cell="gru", seed=2)
    model_a = keras.models.load_model(a / "model.keras")
    x = Tokenizer(read_package(a).tokenizer).pad([[1, 5, 9, 12]] * 50)
    with pytest.raises(ExportError, match=r"parity gate failed on 50 test sequences: max \|keras - onnx\|"):
        parity_gate(model_a, (b / "model.onnx").read_bytes(), x, atol=1e-5)
    # and the same model passes, while an impossible tolerance fails loudly
    ok = parity_gate(model_a, convert(model_a, 40).SerializeToString(), x, atol=1e-5)
    assert ok["label_disagreements"] == 0
    with pytest.raises(ExportError):
        parity_gate(model_a, convert(model_a, 40).SerializeToString(), x, atol=-1.0)


def test_export_refuses_to_overwrite(reviews_csv, tmp_path):
    from training.export import ExportError, export_run

    path = train_and_export(reviews_csv, tmp_path / "models", "once", cell="gru")
    with pytest.raises(ExportError, match="exists"):
        export_run(tmp_path / "runs" / "once", tmp_path / "models", "once", 1)
    meta = json.loads((path / "metadata.json").read_text())
    assert meta["metrics"]["test"]["examples"] == 60
