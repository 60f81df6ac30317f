"""What a request may cost (issue 21): explanations are bounded in number and memory, over-limit requests are
refused before the work they would cost, and no message echoes a client's input whole."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import httpx
import orjson
import pytest

from rnnserve.service.core.errors import Overloaded
from rnnserve.service.runtime.base import RuntimeOptions
from rnnserve.service.runtime.text import TextClassifier
from rnnserve.service.settings import BUNDLED_MODELS
from tests.conftest import Server, real_reviews

SMALL, WAVES = "imdb-lstm-small", "waves-lstm-tutorial"


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("limits") / "models"
    for name in (SMALL, WAVES):
        shutil.copytree(BUNDLED_MODELS / name, root / name)
    return root


@pytest.fixture(scope="module")
def server(repo):
    srv = Server(repo)
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()


def status(pid: int, field: str) -> float:
    """A /proc/PID/status figure in MB (VmRSS now, VmHWM the peak)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


def test_explanations_past_the_limit_are_503():
    text = " ".join(real_reviews(10)[0])

    async def main(clf):
        first = asyncio.create_task(clf.explain(text, max_explanations=1))
        while not clf.explaining:  # the first has passed the check
            await asyncio.sleep(0)
        with pytest.raises(Overloaded, match="running 1 explanations"):
            await clf.explain("a fine film", max_explanations=1)
        await first
        return await clf.explain("a fine film", max_explanations=1)  # its slot is free again

    with TextClassifier.open(BUNDLED_MODELS / SMALL / "1", RuntimeOptions(warmup=False)) as clf:
        assert asyncio.run(main(clf)).runs == 4 and clf.explaining == 0  # the text and its three words


def test_an_explanation_past_the_limit_over_http_has_retry_after(repo):
    """Bursts of explanations with a limit of one running: the overlapping ones are 503 with Retry-After, the
    others answered (bounded: bursts until one overlaps)."""
    srv = Server(repo, "--max-explanations", "1")
    try:
        srv.wait_ready()
        body = {"text": " ".join(" ".join(real_reviews(40)[0]).split()[:1500])}

        async def burst():
            async with httpx.AsyncClient(base_url=srv.url, timeout=60) as http:
                return await asyncio.gather(*(http.post(f"/v1/models/{SMALL}/explain", json=body) for _ in range(8)))

        for _ in range(20):
            answers = asyncio.run(burst())
            assert {r.status_code for r in answers} <= {200, 503} and answers[0].status_code in (200, 503)
            if any(r.status_code == 503 for r in answers):
                break
        refused = next(r for r in answers if r.status_code == 503)
        assert refused.headers["retry-after"] == "1" and refused.json()["error"]["code"] == "overloaded"
        assert any(r.status_code == 200 for r in answers)
    finally:
        srv.stop()


def test_a_maximum_explanation_takes_little_memory(server):
    """A text of the maximum length with a character outside the BMP (4 bytes a character in Python), and more
    words than the model's maxlen: each of its 500 variants used to be a copy of the text (~200 MB)."""
    text = ("😀 " + "great film " * 9000)[:100_000]
    httpx.post(f"{server.url}/v1/models/{SMALL}/explain", json={"text": "a fine film"}, timeout=60)
    before = status(server.proc.pid, "VmRSS")
    r = httpx.post(f"{server.url}/v1/models/{SMALL}/explain", json={"text": text}, timeout=120,
                   headers={"content-type": "application/json"})
    assert r.status_code == 413  # more words than MAX_EXPLAIN_WORDS
    many = "😀" * 93_000 + " " + "great film " * 300  # long, non-BMP, and 600 words: more than maxlen variants
    r = httpx.post(f"{server.url}/v1/models/{SMALL}/explain", json={"text": many}, timeout=120)
    assert r.status_code == 200 and r.json()["runs"] == 501, r.text
    assert status(server.proc.pid, "VmHWM") - before < 60


def test_too_many_sequences_are_refused_before_they_are_validated(server):
    """370,000 sequences (8 MB): refused as V2 refuses them, from the count, not after validating each."""
    body = orjson.dumps({"sequences": [[0] * 10] * 370_000})
    assert len(body) < 8 * 1024 * 1024
    before = status(server.proc.pid, "VmRSS")
    r = httpx.post(f"{server.url}/v1/models/{WAVES}/predict", content=body, timeout=60,
                   headers={"content-type": "application/json"})
    assert r.status_code == 413 and "370000 sequences in one request" in r.json()["error"]["message"]
    r = httpx.post(f"{server.url}/v1/models/{SMALL}/predict", timeout=60, headers={"content-type": "application/json"},
                   content=orjson.dumps({"texts": ["a fine film " * 4] * 100_000}))
    assert r.status_code == 413 and "100000 texts in one request" in r.json()["error"]["message"]
    assert status(server.proc.pid, "VmHWM") - before < 300  # validating them first took 1.4 GB


@pytest.mark.parametrize("method,path,body", [
    ("POST", f"/v1/models/{SMALL}/explain", {"text": "fine", "label": "x" * 1_000_000}),
    ("POST", f"/v1/models/{SMALL}/explain", {"text": "fine", "label": "😀" * 200_000}),
    ("POST", f"/v1/models/{'m' * 3000}/predict", {"text": "fine"}),
    ("POST", f"/v1/models/{SMALL}/versions/{'9' * 3000}/predict", {"text": "fine"}),
    ("POST", f"/v2/models/{SMALL}/infer", {"inputs": [{"name": "t" * 100_000, "shape": [1], "datatype": "BYTES",
                                                       "data": ["fine"]}]}),
    ("POST", f"/v2/models/{SMALL}/infer", {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES",
                                                       "data": ["fine"]}], "outputs": [{"name": "o" * 100_000}]}),
    ("POST", f"/v2/models/{SMALL}/infer", {"inputs": [{"name": "text", "shape": [1] + [7] * 30_000, "datatype": "BYTES",
                                                       "data": ["fine"]}]}),
])
def test_errors_echo_no_input_whole(server, method, path, body):
    r = httpx.request(method, server.url + path, content=orjson.dumps(body), timeout=60,
                      headers={"content-type": "application/json"})
    assert 400 <= r.status_code < 500 and len(r.content) < 1000, (r.status_code, r.content[:300])


def test_score_error_rows_echo_no_column_whole(server):
    column = "c" * 3000
    r = httpx.post(f"{server.url}/v1/models/{SMALL}/score", params={"text_column": column}, timeout=60,
                   content=b"id," + b"x" * 5000 + b"\n1,fine\n", headers={"content-type": "text/csv"})
    row, summary = r.text.splitlines()
    assert "no column" in row and len(row) < 1000 and orjson.loads(summary)["summary"]["errors"] == 1


@pytest.mark.parametrize("body", [
    {"sequences": [[0] * 500_000 + [True]]},  # one wrong value after half a million
    {"sequences": [[True] * 200_000]},  # every value wrong
    {"texts": [5] * 200_000},
])
def test_wrong_values_get_a_short_answer_soon(server, body):
    """Validation stops at the first wrong value and lists a few: a megabyte of them used to answer with a
    37 MB message after seconds of work."""
    r = httpx.post(f"{server.url}/v1/models/{WAVES}/predict", content=orjson.dumps(body), timeout=60,
                   headers={"content-type": "application/json"})
    assert r.status_code in (413, 422) and len(r.content) < 1000, (r.status_code, r.content[:300])
