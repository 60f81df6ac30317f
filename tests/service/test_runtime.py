"""The TextClassifier runtime in-process: open, predict (async, batched) and predict_batch (offline) give
onnxruntime's own answers; close fails what is left; bad packages and overload raise clear errors."""

import asyncio
import json
import shutil

import numpy as np
import onnxruntime as ort
import pytest

from rnnserve.service.core.package import PackageError, seal
from rnnserve.service.core.tokenizer import Tokenizer
from rnnserve.service.runtime.base import RuntimeOptions
from rnnserve.service.runtime.text import TextClassifier
from tests.conftest import real_reviews


def direct(package_dir, texts):
    """onnxruntime on the reference tokenizer's maxlen rows: what the model itself says."""
    clf_tok = Tokenizer(TextClassifier.open(package_dir, RuntimeOptions(warmup=False)).package.tokenizer, fast=False)
    x, _ = clf_tok(texts)
    sess = ort.InferenceSession(str(package_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    return sess.run(["probabilities"], {"input_ids": x})[0]


@pytest.mark.parametrize("model", ["sentiment-lstm", "topics-gru"])
def test_predict_and_predict_batch_equal_onnxruntime(model_repo, model):
    texts, _ = real_reviews(80)
    texts = [t[: 20 + 13 * i] for i, t in enumerate(texts)]  # mixed lengths: masked rows get sorted and padded
    expected = direct(model_repo / model / "1", texts)
    with TextClassifier.open(model_repo / model / "1", RuntimeOptions(max_batch_size=16)) as clf:
        offline = clf.predict_batch(texts)
        assert clf.tokenizer.implementation in ("c", "python")
    assert np.allclose(offline.probabilities, expected, atol=1e-6) and len(offline.token_stats) == len(texts)

    async def served():
        clf = TextClassifier.open(model_repo / model / "1", RuntimeOptions(max_batch_size=16))
        try:
            whole, *singles = await asyncio.gather(clf.predict(texts), *(clf.predict([t]) for t in texts[:10]))
        finally:
            await clf.close()
        return whole, singles

    whole, singles = asyncio.run(served())
    assert np.allclose(whole.probabilities, expected, atol=1e-6)
    assert [s.kept for s in whole.token_stats] == [s.kept for s in offline.token_stats]
    assert np.allclose(np.concatenate([s.probabilities for s in singles]), expected[:10], atol=1e-6)


def test_overload_and_close_answer_every_caller(model_repo):
    async def main():
        clf = TextClassifier.open(model_repo / "sentiment-lstm" / "1", RuntimeOptions(max_batch_size=1, max_queue=4))
        calls = [asyncio.ensure_future(clf.predict([f"text {i}"])) for i in range(6)]
        await asyncio.sleep(0)  # all six submit: four fit the queue, two are refused
        await clf.close(grace_s=0)
        return await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), 5)

    results = [r if isinstance(r, Exception) else "ok" for r in asyncio.run(main())]
    assert [str(r) for r in results[4:]] == ["model 'sentiment-lstm/1' queue is full (4 requests); retry later"] * 2
    assert [str(r) for r in results[:4]] == ["model 'sentiment-lstm/1' is shutting down"] * 4


def test_open_refuses_bad_packages_with_reasons(model_repo, tmp_path):
    broken = tmp_path / "broken" / "1"
    shutil.copytree(model_repo / "sentiment-lstm" / "1", broken)
    meta = json.loads((broken / "metadata.json").read_text())
    (broken / "metadata.json").write_text(json.dumps(meta | {"labels": ["only-one"]}))
    seal(broken)
    with pytest.raises(PackageError, match="two or more"):
        TextClassifier.open(broken)
    with pytest.raises(PackageError, match="no package directory here"):
        TextClassifier.open(tmp_path / "nothing" / "1")


def test_classify_each_isolates_failing_texts_and_shares_service_errors():
    """One rule for the scorer and Ray Data: a failed run is retried text by text; a service error (the model
    overloaded or gone) is every text's answer, without retries."""
    import asyncio

    from rnnserve.service.core.errors import Overloaded
    from rnnserve.service.runtime.text import ClassificationResult, classify_each

    calls = []

    async def flaky(texts):
        calls.append(list(texts))
        if "bad" in texts:
            raise ValueError("cannot tokenize")
        return ClassificationResult(np.full((len(texts), 2), 0.5, np.float32), [None] * len(texts))

    async def overloaded(texts):
        calls.append(list(texts))
        raise Overloaded("queue is full")

    probs, errors = asyncio.run(classify_each(flaky, ["a", "bad", "c"], 2))
    assert errors == [None, "cannot tokenize", None] and np.isnan(probs[1]).all() and probs[0, 0] == 0.5
    assert calls == [["a", "bad", "c"], ["a"], ["bad"], ["c"]]
    calls.clear()
    probs, errors = asyncio.run(classify_each(overloaded, ["a", "b"], 2))
    assert errors == ["queue is full"] * 2 and calls == [["a", "b"]] and np.isnan(probs).all()
    assert asyncio.run(classify_each(flaky, [], 2))[1] == []


def _inputs(model) -> list:
    """Rows each runtime's predict takes: texts, or sequences [T, F] (more than one batch of them)."""
    from rnnserve.service.runtime.sequence import SequenceModel

    if isinstance(model, SequenceModel):
        return list(np.random.default_rng(3).normal(size=(70, *model.shape)).astype(np.float32))
    texts, _ = real_reviews(35)
    return [t[: 30 + 7 * i] for i, t in enumerate(texts)]


@pytest.mark.parametrize("repo, name", [("model_repo", "sentiment-lstm"), ("model_repo", "topics-gru"),
                                        ("task_repo", "waves-next"), ("task_repo", "waves-kind"),
                                        ("task_repo", "waves-steps"), ("task_repo", "chars"), ("task_repo", "lm")])
def test_every_runtime_keeps_the_contract_predict_batch_equals_predict(request, repo, name):
    """rnnserve.open_model offers predict_batch for every runtime: here and now, it gives what the batcher does."""
    from rnnserve import open_model

    async def batched(model, rows):
        return await model.predict(rows)

    with open_model(request.getfixturevalue(repo) / name / "1", RuntimeOptions(max_batch_size=16)) as model:
        rows = _inputs(model)
        offline, served = model.predict_batch(rows), asyncio.run(batched(model, rows))
    if hasattr(offline, "probabilities"):  # a text classifier's ClassificationResult
        offline, served = offline.probabilities, served.probabilities
    assert np.abs(offline - served).max() <= 1e-6


def test_the_arena_shrinker_is_the_identity_model_onnx_writes():
    from onnx import TensorProto, helper

    from rnnserve.service.runtime.session import IDENTITY_MODEL, shrink_shared_arena

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "shrink",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    assert model.SerializeToString() == IDENTITY_MODEL
    shrink_shared_arena()  # runs (or has nothing to do) without error
