"""INT8 packages (training/quantize.py) on a tiny real LSTM package: quantized by onnxruntime, gated on the
validation split, served like any package."""

import json

import pytest

from rnnserve.service.core.package import read_package
from rnnserve.training.quantize import QuantizeError, quantize_package
from tests.conftest import in_process, wait_ready


def test_an_int8_package_is_gated_recorded_and_served(trained_repo, tmp_path):
    models = tmp_path / "models"
    path = quantize_package(trained_repo / "sentiment-lstm" / "1", models, "sentiment-int8", max_loss=100)
    meta = read_package(path).metadata
    q = meta.quantization
    assert q["quantized"]["DynamicQuantizeLSTM"] == 1 and q["quantized"]["MatMulInteger"] >= 1
    assert q["source"]["name"] == "sentiment-lstm" and q["validation_gate"]["examples"] > 0
    assert "DynamicQuantizeLSTM" in meta.onnx.op_types and 0 <= meta.metrics["test"]["accuracy"] <= 1
    assert (path / "model.onnx").stat().st_size < (trained_repo / "sentiment-lstm" / "1" / "model.onnx").stat().st_size
    # the INT8 model's own drift profile, on its source's training texts
    profile = json.loads(read_package(path).read("profile.json"))
    assert profile["texts"] > 0 and "training split" in profile["source"]
    with in_process(models) as client:
        wait_ready(client)
        r = client.post("/v1/models/sentiment-int8/predict", json={"texts": ["a wonderful film", "dull"]})
        assert r.status_code == 200 and len(r.json()["predictions"]) == 2


def test_the_gate_refuses_with_the_figures(trained_repo, tmp_path, task_repo):
    with pytest.raises(QuantizeError, match=r"INT8 loses .* points of \w+ accuracy .* the limit is -100"):
        quantize_package(trained_repo / "sentiment-lstm" / "1", tmp_path, "x", max_loss=-100)
    assert not (tmp_path / "x").exists()
    with pytest.raises(QuantizeError, match="takes text classifiers"):
        quantize_package(task_repo / "waves-next" / "1", tmp_path, "y")
    with pytest.raises(QuantizeError, match="no package directory here"):
        quantize_package(tmp_path / "nope" / "1", tmp_path, "z")
