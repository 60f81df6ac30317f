"""/v1 through the real ASGI app in-process (Starlette TestClient) with real ONNX packages."""

import numpy as np
import onnxruntime as ort
import pytest

from rnnserve.service.core.package import read_package
from rnnserve.service.core.tokenizer import Tokenizer
from tests.conftest import real_reviews


def offline_predict(package_dir, texts):
    pkg = read_package(package_dir)
    x, _ = Tokenizer(pkg.tokenizer)(texts)
    sess = ort.InferenceSession(str(package_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    return sess.run(["probabilities"], {"input_ids": x})[0], pkg.labels


@pytest.mark.parametrize("model", ["sentiment-lstm", "topics-gru"])
def test_http_predictions_equal_offline_onnxruntime(api, model_repo, model):
    texts, _ = real_reviews(20)
    texts += ["", "!!!", "A film. " * 300, "ünïcödé wörds 東京"]
    probs, labels = offline_predict(model_repo / model / "1", texts)
    r = api.post(f"/v1/models/{model}/predict",
                   json={"texts": texts, "return_probabilities": True, "top_k": 2})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == model and body["version"] == 1
    preds = body["predictions"]
    assert len(preds) == len(texts)
    for p, row in zip(preds, probs):
        assert p["label"] == labels[int(row.argmax())]
        assert p["score"] == pytest.approx(float(row.max()), abs=1e-6)
        assert np.allclose([p["probabilities"][label] for label in labels], row, atol=1e-6)
        assert len(p["top_k"]) == 2 and p["top_k"][0]["label"] == p["label"]
    assert preds[-2]["tokens"]["truncated"] is True
    assert preds[0]["tokens"]["kept"] > 1


def test_single_text_and_token_stats(api):
    r = api.post("/v1/models/sentiment-lstm/predict", json={"text": "zzzqqq unknownword film"})
    assert r.status_code == 200
    (pred,) = r.json()["predictions"]
    assert pred["tokens"]["oov"] >= 2 and "probabilities" not in pred


def test_versioned_route_and_request_id_echo(api):
    r = api.post("/v1/models/sentiment-lstm/versions/1/predict", json={"text": "good"},
                   headers={"X-Request-ID": "abc-123"})
    assert r.status_code == 200 and r.headers["x-request-id"] == "abc-123"


def test_model_listing(api):
    models = api.get("/v1/models").json()["models"]
    by_name = {m["name"]: m for m in models}
    assert set(by_name) == {"sentiment-lstm", "topics-gru"}
    m = api.get("/v1/models/topics-gru").json()
    assert m["labels"] == ["alpha", "beta", "gamma"]
    assert m["provider"] == "CPUExecutionProvider" and m["maxlen"] == 40 and m["state"] == "ready"
    assert m["architecture"]["cell"] == "gru" and "accuracy" in m["metrics"]["test"]
    assert m["versions"][0]["version"] == 1


@pytest.mark.parametrize("body,status,fragment", [
    ({"texts": []}, 422, "at least 1 item"),
    ({"texts": [1, 2]}, 422, "valid string"),
    ({"text": "a", "texts": ["b"]}, 422, "exactly one"),
    ({}, 422, "exactly one"),
    ({"text": "a", "top_k": 0}, 422, "top_k"),
    ({"text": "a", "colour": "red"}, 422, "colour"),
    ([1, 2], 422, "object"),
    ({"texts": ["x"] * 257}, 413, "limit is 256"),
    ({"text": "x" * 100_001}, 413, "limit is 100000"),
])
def test_bad_json_bodies(api, body, status, fragment):
    r = api.post("/v1/models/sentiment-lstm/predict", json=body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["code"] and fragment in err["message"]


@pytest.mark.parametrize("content,headers,status", [
    (b'{"text": "\xff\xfe"}', {"content-type": "application/json"}, 400),
    (b"{not json", {"content-type": "application/json"}, 400),
    (b'{"text": "a"}', {"content-type": "text/plain"}, 415),
    (b"x" * (8 * 1024 * 1024 + 1), {"content-type": "application/json"}, 413),
])
def test_bad_raw_bodies(api, content, headers, status):
    r = api.post("/v1/models/sentiment-lstm/predict", content=content, headers=headers)
    assert r.status_code == status, r.text
    assert set(r.json()["error"]) == {"code", "message"}


@pytest.mark.parametrize("path,status", [
    ("/v1/models/nope/predict", 404),
    ("/v1/models/sentiment-lstm/versions/9/predict", 404),
    ("/v1/models/sentiment-lstm/versions/abc/predict", 404),
    ("/v1/models/..%2F..%2Fetc/predict", 404),
])
def test_unknown_models_and_versions(api, path, status):
    r = api.post(path, json={"text": "x"})
    assert r.status_code == status and r.json()["error"]["code"] == "not_found"


def test_empty_string_is_valid(api):
    r = api.post("/v1/models/sentiment-lstm/predict", json={"texts": ["", " "]})
    assert r.status_code == 200 and len(r.json()["predictions"]) == 2


def test_metrics_exposed(api):
    api.post("/v1/models/sentiment-lstm/predict", json={"text": "fine"})
    text = api.get("/metrics").text
    for name in ("rnnserve_requests_total", "rnnserve_request_errors_total", "rnnserve_request_latency_seconds",
                 "rnnserve_batch_size", "rnnserve_queue_wait_seconds", "rnnserve_inference_seconds",
                 "rnnserve_models_loaded 2.0"):
        assert name in text
    assert 'endpoint="/v1/models/{name}/predict",model="sentiment-lstm",status="200"' in text


def test_texts_total_counts_every_input_run(api):
    def texts_total() -> float:
        line = next(x for x in api.get("/metrics").text.splitlines()
                    if x.startswith('rnnserve_texts_total{model="topics-gru"}'))
        return float(line.split()[-1])

    before = texts_total()
    assert api.post("/v1/models/topics-gru/predict", json={"texts": ["a", "b", "c"]}).status_code == 200
    assert texts_total() == before + 3
