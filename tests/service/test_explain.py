"""/explain: contributions equal an occlusion computed offline with onnxruntime on the ids themselves, spans
index the original text, words the model never sees are reported as such, the limits hold, and an
explanation shares the model with /predict instead of holding it."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from rnnserve.service.core.tokenizer import Tokenizer, TokenizerSpec
from rnnserve.service.runtime.base import RuntimeOptions
from rnnserve.service.runtime.text import TextClassifier
from tests.conftest import ROOT, real_reviews

IMDB = ROOT / "models" / "imdb-lstm-small" / "1"
TEXTS = [
    "A wonderful, moving film... though far too long!",
    "Bad bad BAD. The plot (if any) was dull; the acting? Worse. bad",  # repeated words, punctuation
    "Café crème — naïve “quotes” and emoji 🎬 in a great film, really great",  # Unicode
]


def offline_occlusion(package: Path, text: str, label: int | None = None) -> tuple[np.ndarray, dict]:
    """The definition, computed without the service: delete each seen word's id, pad, run onnxruntime."""
    tok = Tokenizer(TokenizerSpec.load(package / "tokenizer.json"), fast=False)
    session = ort.InferenceSession(str(package / "model.onnx"), providers=["CPUExecutionProvider"])
    ids, _, spans = tok.encode_spans(text)
    maxlen = tok.spec.maxlen
    cut = max(0, len(ids) - maxlen)
    seen = range(cut, len(ids)) if tok.spec.truncating == "pre" else range(len(ids) - cut)
    positions = [i for i in seen if spans[i] != (0, 0)]  # every seen id but the start token
    rows = [ids] + [ids[:i] + ids[i + 1:] for i in positions]
    probs = session.run(None, {"input_ids": tok.pad(rows, maxlen)})[0]
    label = int(probs[0].argmax()) if label is None else label
    return probs[0], {spans[i]: float(probs[0, label] - probs[1 + k, label]) for k, i in enumerate(positions)}


def check_against_offline(answer: dict, package: Path, text: str, labels: list[str]) -> None:
    label = labels.index(answer["label"])
    full, expected = offline_occlusion(package, text, label)
    assert answer["prediction"]["probabilities"][answer["label"]] == pytest.approx(full[label], abs=1e-5)
    got = {(w["start"], w["end"]): w["contribution"] for w in answer["words"] if w["id"] is not None}
    assert set(got) == set(expected)
    for span, value in expected.items():
        assert got[span] == pytest.approx(value, abs=1e-5), span
    assert all(w["contribution"] == 0 for w in answer["words"] if w["id"] is None)
    assert answer["runs"] == 1 + len(expected)


def check_spans(answer: dict, text: str) -> None:
    words = answer["words"]
    for w in words:
        assert text[w["start"]:w["end"]] == w["text"] and w["text"].strip() == w["text"] != ""
    assert all(a["end"] < b["start"] for a, b in zip(words, words[1:]))  # in order, separated


@pytest.mark.parametrize("name", ["sentiment-lstm", "topics-gru"])  # padded to maxlen; masked, padded per batch
@pytest.mark.parametrize("text", TEXTS + [real_reviews(1)[0][0]])
def test_contributions_equal_an_offline_occlusion(api, model_repo, name, text):
    r = api.post(f"/v1/models/{name}/explain", json={"text": text})
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["method"] == "occlusion" and answer["window"] == 1
    assert answer["label"] == answer["prediction"]["label"]
    check_spans(answer, text)
    check_against_offline(answer, model_repo / name / "1", text, api.get(f"/v1/models/{name}").json()["labels"])


def test_a_chosen_label_is_explained(api, model_repo):
    text = TEXTS[0]
    r = api.post("/v1/models/topics-gru/versions/1/explain", json={"text": text, "label": "gamma"})
    assert r.status_code == 200 and r.json()["label"] == "gamma"
    check_against_offline(r.json(), model_repo / "topics-gru" / "1", text, ["alpha", "beta", "gamma"])


def test_the_prediction_is_the_one_predict_gives(api):
    text = TEXTS[1]
    explained = api.post("/v1/models/sentiment-lstm/explain", json={"text": text}).json()["prediction"]
    predicted = api.post("/v1/models/sentiment-lstm/predict",
                         json={"text": text, "top_k": 2, "return_probabilities": True}).json()["predictions"][0]
    assert explained == predicted


def test_window_method_shares_each_windows_change(api, model_repo):
    text = real_reviews(1)[0][1]
    answer = api.post("/v1/models/sentiment-lstm/explain", json={"text": text, "method": "window",
                                                                "window": 4}).json()
    seen = [w for w in answer["words"] if w["id"] is not None]
    assert answer["method"] == "window" and answer["window"] == 4
    assert answer["runs"] == 1 + math.ceil(len(seen) / 4)
    # The first window, offline: its four words' ids deleted at once.
    tok = Tokenizer(TokenizerSpec.load(model_repo / "sentiment-lstm" / "1" / "tokenizer.json"), fast=False)
    session = ort.InferenceSession(str(model_repo / "sentiment-lstm" / "1" / "model.onnx"))
    ids, _, spans = tok.encode_spans(text)
    first = {(w["start"], w["end"]) for w in seen[:4]}
    variant = [i for i, s in zip(ids, spans) if s not in first]
    probs = session.run(None, {"input_ids": tok.pad([ids, variant])})[0]
    label = ["negative", "positive"].index(answer["label"])
    for w in seen[:4]:
        assert w["contribution"] == pytest.approx((probs[0, label] - probs[1, label]) / 4, abs=1e-5)
    assert len({w["contribution"] for w in seen[:4]}) == 1


def test_words_the_model_never_sees_are_reported():
    """The bundled IMDB LSTM: unknown words are dropped, words past the 10,000 most frequent become the OOV id,
    and a text longer than maxlen loses its first words (truncating='pre')."""
    spec = TokenizerSpec.load(IMDB / "tokenizer.json")
    rare = spec.words[20_000]
    text = f"Great acting, zqxjvw plot and a {rare} ending. " + "fine " * spec.maxlen + "Superb!"
    with TextClassifier.open(IMDB, RuntimeOptions(warmup=False)) as clf:
        out = asyncio.run(clf.explain(text))
    words = out.words
    by_text = {w.text: w for w in words}
    assert by_text["zqxjvw"].status == "dropped" and by_text["zqxjvw"].id is None
    assert by_text["Great"].status == "truncated" and by_text["Great"].id is None  # the first words are cut
    assert words[-1].text == "Superb" and words[-1].status == "kept" and words[-1].contribution != 0
    # 509 ids (the start token, 508 known words): the first 9 are cut, the start token and 8 words
    assert sum(w.status == "truncated" for w in words) == 8 and sum(w.id is not None for w in words) == spec.maxlen
    short = f"a {rare} film"
    with TextClassifier.open(IMDB, RuntimeOptions(warmup=False)) as clf:
        out = asyncio.run(clf.explain(short))
    assert [(w.text, w.status, w.id) for w in out.words][1] == (rare, "oov", 2)
    check_against_offline({"label": clf.labels[out.label], "runs": out.runs,
                           "prediction": {"probabilities": dict(zip(clf.labels,
                                                                    out.prediction.probabilities[0].tolist()))},
                           "words": [w.to_dict() for w in out.words]}, IMDB, short, clf.labels)


@pytest.mark.parametrize("body, status, code", [
    ({"text": "fine", "label": "nope"}, 422, "invalid_input"),
    ({"texts": ["fine"]}, 422, "invalid_input"),
    ({"text": "fine", "method": "shap"}, 422, "invalid_input"),
    ({"text": "fine", "method": "window", "window": 1}, 422, "invalid_input"),
    ({"text": 3}, 422, "invalid_input"),
    ({"text": "word " * 2001}, 413, "payload_too_large"),
    ({"text": "x" * 100_001}, 413, "payload_too_large"),
])
def test_bad_requests_get_clear_errors(api, body, status, code):
    r = api.post("/v1/models/sentiment-lstm/explain", json=body)
    assert r.status_code == status and r.json()["error"]["code"] == code, r.text


def test_other_errors_are_those_of_predict(api):
    assert api.post("/v1/models/nope/explain", json={"text": "x"}).status_code == 404
    assert api.post("/v1/models/sentiment-lstm/versions/9/explain", json={"text": "x"}).status_code == 404
    url = "/v1/models/sentiment-lstm/explain"
    assert api.post(url, content=b"{not json", headers={"content-type": "application/json"}).status_code == 400
    assert api.post(url, content=b"text=x", headers={"content-type": "text/plain"}).status_code == 415
    # In predict's order: the model (404, or the wrong task naming the operation to use), then a body
    # declared JSON (415) and present (400), then its fields (422)
    assert api.post("/v1/models/nope/explain", json={"text": 5}).status_code == 404
    assert api.post("/v1/models/nope/explain", content=b"x", headers={"content-type": "text/plain"}).status_code == 404
    assert api.post("/v1/models/sentiment-lstm/versions/9/explain", json={"text": 5}).status_code == 404
    r = api.post("/v1/models/sentiment-lstm/generate", json={"texts": ["a"]})
    assert r.status_code == 422 and r.json()["error"]["code"] == "wrong_task", r.text
    r = api.post(url, content=b"", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]


def test_an_explanation_does_not_hold_up_predict():
    """A 500-word explanation is 501 texts, three full runs of 167; a /predict sent while the first runs is
    answered before the second (queued all at once, the three runs would all go first)."""
    text = " ".join(real_reviews(40)[0])
    order = []

    async def main(clf):
        explaining = asyncio.create_task(clf.explain(text))
        explaining.add_done_callback(lambda _: order.append("explain"))
        while clf.batcher.idle:  # until the explanation is queued
            await asyncio.sleep(0.001)
        await clf.predict(["a short review"])
        order.append("predict")
        out = await explaining
        return out.runs

    with TextClassifier.open(IMDB, RuntimeOptions(max_batch_size=167, warmup=False)) as clf:
        runs = asyncio.run(main(clf))
    assert runs == 501 and order == ["predict", "explain"]
