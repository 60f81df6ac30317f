"""The bundled packages in models/: their recorded test metrics are real, they meet their targets, they passed
the Keras-vs-ONNX export gate, and the HTTP service gives the offline pipeline's predictions on raw reviews,
sequences and prompts."""

import json

import httpx
import numpy as np
import onnx
import pytest

from rnnserve.service.core.package import read_package
from rnnserve.service.core.tokenizer import Tokenizer
from rnnserve.service.settings import BUNDLED_MODELS
from rnnserve.training.config import TEACHERS
from rnnserve.training.evaluate import evaluate_package, onnx_predict
from tests.conftest import real_reviews

# Test-split accuracy each bundled model must reach: its issue's target (5, 15; 28: a distilled student within
# half a point of its teacher ensemble's), or, for the model kept from before, the figure it reached.
TARGETS = {
    "imdb-lstm-ensemble": 0.89,
    "imdb-gru-ensemble": 0.89,
    "imdb-simple-rnn": 0.86,
    "reuters-lstm-ensemble": 0.80,
    "reuters-gru-ensemble": 0.80,
    "reuters-simple-rnn": 0.72,
    "imdb-lstm-small": 0.879,  # the earlier imdb-lstm: 87.92%
    "imdb-lstm": 0.9068 - 0.005,  # distilled from imdb-lstm-ensemble (90.68%)
    "reuters-lstm": 0.8419 - 0.005,  # distilled from reuters-lstm-ensemble (84.19%)
}


WAVES_R2 = 0.9  # the next value of a noisy sine wave, from ten steps
CHAR_RNN_BITS = 2.5  # bits per character on the held-out tenth of the text


def package(name: str):
    return read_package(BUNDLED_MODELS / name / "1")


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_recorded_accuracy_is_recomputed_and_meets_target(name, data_dir):
    result = evaluate_package(BUNDLED_MODELS / name / "1", data_dir)
    measured, recorded = result["measured"], result["recorded"]
    assert measured["examples"] == {"imdb": 25000, "reuters": 2246}[name.split("-")[0]]
    assert abs(measured["accuracy"] - recorded["accuracy"]) * 100 <= 0.01
    assert abs(measured["macro_f1"] - recorded["macro_f1"]) * 100 <= 0.01
    assert measured["accuracy"] >= TARGETS[name]


@pytest.mark.parametrize("student,teacher", sorted(TEACHERS.items()))
def test_the_default_names_are_students_of_their_bundled_ensembles(student, teacher):
    meta, taught_by = package(student).metadata, package(teacher).metadata
    assert meta.distillation["teacher"] == {"name": teacher, "version": 1, "sha256": taught_by.onnx.sha256,
                                            "test_accuracy": taught_by.metrics["test"]["accuracy"]}
    assert meta.architecture["ensemble"] == 1 and taught_by.architecture["ensemble"] == 3
    assert meta.metrics["test"]["accuracy"] >= taught_by.metrics["test"]["accuracy"] - 0.005


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_packages_are_native_and_small(name):
    pkg = package(name)
    ops = pkg.metadata.onnx.op_types
    assert "Loop" not in ops and {"RNN", "GRU", "LSTM"} & set(ops)
    size = sum(f.stat().st_size for f in pkg.path.iterdir())
    assert size < 25 * 1024 * 1024


@pytest.mark.parametrize("path", sorted(BUNDLED_MODELS.glob("*/*/model.onnx")), ids=lambda p: p.parent.parent.name)
def test_every_onnxruntime_the_pins_accept_loads_them(path):
    # The lowest IR version each package's opsets need: onnxruntime 1.20 (the lowest pinned) reads IR 10 at
    # most, and onnxruntime-gpu 1.31.1 refused the language model's IR 14 on the GPU check's machine.
    model = onnx.load(path, load_external_data=False)
    assert model.ir_version == onnx.helper.find_min_ir_version_for(list(model.opset_import)) <= 10
    domains = [opset.domain for opset in model.opset_import]  # each once: onnxruntime's quantizer needs it
    assert len(domains) == len(set(domains))


def test_the_sequence_model_and_the_language_model_figures_are_recomputed(data_dir):
    waves = evaluate_package(BUNDLED_MODELS / "waves-lstm-tutorial" / "1", data_dir)
    assert waves["measured"]["examples"] == 1000 and abs(waves["delta"]["mse"]) <= 1e-6
    assert waves["measured"]["r2"] >= WAVES_R2
    lm = evaluate_package(BUNDLED_MODELS / "reuters-char-rnn" / "1", data_dir)
    assert abs(lm["delta"]["bits_per_char"]) <= 1e-4 and abs(lm["delta"]["accuracy"]) <= 1e-4
    assert lm["measured"]["bits_per_char"] <= CHAR_RNN_BITS


def test_the_bundled_sequence_model_and_language_model_over_http(bundled_server):
    from rnnserve.service.core.sequences import normalize
    from rnnserve.training.sequences import waves

    x = waves("waves-next", 8, 10, seed=99)[0][:, :10, None]
    pkg = package("waves-lstm-tutorial")
    offline = onnx_predict(pkg.path, normalize(x, pkg.metadata.input.normalization))
    r = httpx.post(f"{bundled_server.url}/v1/models/waves-lstm-tutorial/predict", json={"sequences": x.tolist()})
    assert np.abs(np.array([p["value"] for p in r.json()["predictions"]]) - offline[:, 0]).max() < 1e-6
    body = {"prompt": "The company said ", "max_chars": 200, "temperature": 0.5, "seed": 3}
    texts = [httpx.post(f"{bundled_server.url}/v1/models/reuters-char-rnn/generate", json=body, timeout=60).json()
             for _ in range(2)]
    assert texts[0]["text"] == texts[1]["text"] and texts[0]["chars"] == 200


@pytest.mark.parametrize("name", sorted(TARGETS) + ["imdb-lstm-tutorial", "waves-lstm-tutorial", "reuters-char-rnn"])
def test_export_gate_was_passed(name):
    parity = package(name).metadata.parity
    examples = 100 if name == "reuters-char-rnn" else 1000  # the language model: 100 windows of 100 steps each
    assert parity["examples"] >= examples and parity["max_abs_diff"] <= 1e-5 and parity["label_disagreements"] == 0


@pytest.mark.parametrize("name", ["imdb-lstm", "imdb-gru-ensemble", "imdb-simple-rnn", "imdb-lstm-tutorial"])
def test_http_equals_the_offline_pipeline_on_raw_reviews(bundled_server, name):
    texts, _ = real_reviews(40)
    r = httpx.post(f"{bundled_server.url}/v1/models/{name}/predict",
                   json={"texts": texts, "return_probabilities": True}, timeout=60)
    assert r.status_code == 200
    predictions = r.json()["predictions"]
    http = np.array([[p["probabilities"][label] for label in ("negative", "positive")] for p in predictions])
    pkg = package(name)
    offline = onnx_predict(pkg.path, Tokenizer(pkg.tokenizer)(texts)[0])
    assert np.abs(http - offline).max() < 1e-6
    assert [p["label"] for p in r.json()["predictions"]] == [pkg.labels[i] for i in offline.argmax(1)]


def test_every_bundled_model_is_served(bundled_server):
    models = {m["name"]: m for m in httpx.get(f"{bundled_server.url}/v1/models").json()["models"]}
    assert set(TARGETS) <= set(models)
    assert all(m["state"] == "ready" for m in models.values())
    reuters = models["reuters-gru-ensemble"]
    assert len(reuters["labels"]) == 46 and reuters["labels"][3] == "earn"
    meta = json.loads((BUNDLED_MODELS / "reuters-gru-ensemble" / "1" / "metadata.json").read_text())
    assert reuters["metrics"] == meta["metrics"]


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_typographic_text_is_read_as_typed_text(bundled_server, name):
    # The sentence: with ’ the negations were unknown words and imdb-lstm (then the ensemble) read it as
    # positive (0.78).
    typed = "I didn't like it. It wasn't good."
    variants = [typed, "I didn\u2019t like it.\u00a0It wasn\u2019t good.",
                "I didn\u02bct like it \u2014 it wasn\uff07t good."]
    r = httpx.post(f"{bundled_server.url}/v1/models/{name}/predict",
                   json={"texts": variants, "return_probabilities": True}, timeout=60)
    predictions = r.json()["predictions"]
    assert all(p["probabilities"] == predictions[0]["probabilities"] for p in predictions), predictions
    assert all(p["tokens"] == predictions[0]["tokens"] for p in predictions)
    if name in ("imdb-lstm", "imdb-lstm-ensemble"):
        assert predictions[1]["label"] == "negative"
    r = httpx.post(f"{bundled_server.url}/v1/models/{name}/explain", json={"text": variants[1]}, timeout=60)
    words = {w["text"]: w for w in r.json()["words"]}
    assert words["didn\u2019t"]["token"] == "didn't" and words["didn\u2019t"]["status"] == "kept"
    assert variants[1][words["wasn\u2019t"]["start"]:words["wasn\u2019t"]["end"]] == "wasn\u2019t"
