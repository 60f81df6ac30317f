"""Dynamic batching under real concurrent HTTP load: batches form and every answer is its own."""

import asyncio
import re

import httpx

from tests.conftest import real_reviews
from tests.service.test_api_v1 import offline_predict


def test_64_concurrent_requests_are_batched_and_matched(server, model_repo):
    texts, _ = real_reviews(32)
    probs, labels = offline_predict(model_repo / "sentiment-lstm" / "1", texts)

    def batch_count() -> tuple[float, float]:
        text = httpx.get(f"{server.url}/metrics").text
        count = float(re.search(r'rnnserve_batch_size_count\{model="sentiment-lstm"\} (\S+)', text).group(1))
        total = float(re.search(r'rnnserve_batch_size_sum\{model="sentiment-lstm"\} (\S+)', text).group(1))
        return count, total

    before = batch_count()

    async def fire():
        limits = httpx.Limits(max_connections=64)
        async with httpx.AsyncClient(base_url=server.url, limits=limits, timeout=30) as client:
            async def one(i):
                r = await client.post("/v1/models/sentiment-lstm/predict",
                                      json={"text": texts[i], "return_probabilities": True})
                return i, r
            return await asyncio.gather(*(one(i) for i in range(64)))

    for i, r in asyncio.run(fire()):
        assert r.status_code == 200
        pred = r.json()["predictions"][0]
        assert pred["label"] == labels[int(probs[i].argmax())]
        assert abs(pred["probabilities"][labels[1]] - float(probs[i][1])) < 1e-6
    after = batch_count()
    batches, rows = after[0] - before[0], after[1] - before[1]
    assert rows == 64
    assert batches < 64, "no request was coalesced with another"


def test_masked_model_batches_texts_of_different_lengths(server, model_repo):
    """Requests padded to different widths share a batch (right-padded); answers stay exact."""
    texts, _ = real_reviews(16)
    texts = [t[: 10 + 37 * i] for i, t in enumerate(texts)]  # from a few words to the whole review
    probs, labels = offline_predict(model_repo / "topics-gru" / "1", texts)

    async def fire():
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            return await asyncio.gather(*(client.post("/v1/models/topics-gru/predict",
                                                      json={"text": t, "return_probabilities": True})
                                          for t in texts))

    for row, r in zip(probs, asyncio.run(fire())):
        got = r.json()["predictions"][0]["probabilities"]
        assert max(abs(got[label] - float(p)) for label, p in zip(labels, row)) < 1e-6
