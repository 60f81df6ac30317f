"""Generation under careless and hostile use (issue 21): long prompts, reloads mid-generation and every
documented sampling value, on the bundled character language model (no training needed)."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest

from rnnserve.service.runtime.generator import PROMPT_WINDOW, Sampling, TextGenerator
from rnnserve.service.settings import BUNDLED_MODELS
from tests.conftest import Server, in_process, wait_ready

LM = "reuters-char-rnn"
PROMPT = "Oil prices rose sharply on Tuesday after the company said its output would fall. "


@pytest.fixture(scope="module")
def lm_repo(tmp_path_factory) -> Path:
    repo = tmp_path_factory.mktemp("lm") / "models"
    shutil.copytree(BUNDLED_MODELS / LM, repo / LM)
    return repo


@pytest.fixture(scope="module")
def client(lm_repo):
    with in_process(lm_repo) as c:
        wait_ready(c)
        yield c


def peak_mb(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


def test_a_long_prompt_runs_in_windows_exactly_as_in_one_run(lm_repo):
    """Windows carry the state: the next character's logits equal the whole prompt's in one run."""
    package = lm_repo / LM / "1"
    prompt = PROMPT * 40  # over 3,000 characters: a dozen windows
    assert len(prompt) > 10 * PROMPT_WINDOW

    async def windowed() -> str:
        with TextGenerator.open(package) as lm:
            text = "".join([c async for c in lm.generate(prompt, Sampling(max_chars=20, temperature=0))])
            ids = lm.encode_prompt(prompt)
            await lm.close()
            return text, ids, lm

    text, ids, lm = asyncio.run(windowed())
    meta = lm.package.metadata
    session = ort.InferenceSession(str(package / "model.onnx"), providers=["CPUExecutionProvider"])
    feeds = {s["input"]: np.zeros((1, 1, s["shape"][2]), np.float32) for s in meta.state}
    names = [meta.output.name, *(s["output"] for s in meta.state)]
    want = []
    step = ids[None, :]
    for _ in range(20):  # greedy, the whole prompt in one run, then one character at a time
        logits, *states = session.run(names, {meta.input.name: step, **feeds})
        i = lm.first_id + int(logits[0, lm.first_id:].argmax())
        want.append(lm.chars[i - lm.first_id])
        feeds = {s["input"]: st for s, st in zip(meta.state, states)}
        step = np.array([[i]], np.int64)
    assert text == "".join(want)


def test_maximum_length_prompts_at_once_keep_memory_bounded(lm_repo):
    """32 prompts of the maximum length at once: they used to be stacked into one run as long as the prompt
    (~240 MB a prompt, kept by onnxruntime's arena); in windows the worker's peak stays within 150 MB of its
    size before them."""
    srv = Server(lm_repo, "--max-generations", "32")
    try:
        srv.wait_ready()
        prompt = (PROMPT * 2000)[:100_000]  # MAX_TEXT_CHARS, the default prompt limit
        httpx.post(f"{srv.url}/v1/models/{LM}/generate", json={"prompt": PROMPT, "max_chars": 1}, timeout=30)
        before = peak_mb(srv.proc.pid, "VmRSS")

        async def burst():
            async with httpx.AsyncClient(base_url=srv.url, timeout=300) as http:
                body = {"prompt": prompt, "max_chars": 1}
                return await asyncio.gather(*(http.post(f"/v1/models/{LM}/generate", json=body) for _ in range(32)))

        answers = asyncio.run(burst())
        assert [r.status_code for r in answers] == [200] * 32
        assert peak_mb(srv.proc.pid, "VmHWM") - before < 150
    finally:
        srv.stop()


def test_a_reload_lets_running_generations_finish(lm_repo):
    """A generation streams while its model is reloaded: it ends with `event: done` and every character,
    on the copy it started on; the reload answers once it has."""
    srv = Server(lm_repo, env={"RNNSERVE_MAX_GENERATE_CHARS": "20000"})
    try:
        srv.wait_ready()

        async def scenario():
            async with httpx.AsyncClient(base_url=srv.url, timeout=120) as http:
                body = {"prompt": PROMPT, "max_chars": 20000, "temperature": 0.8, "seed": 3, "stream": True}
                async with http.stream("POST", f"/v1/models/{LM}/generate", json=body) as r:
                    events = aiter(r.aiter_text())
                    first = await anext(events)  # the generation runs
                    reload = asyncio.create_task(http.post(f"/v2/repository/models/{LM}/load"))
                    rest = [chunk async for chunk in events]
                return first + "".join(rest), await reload

        stream, reload = asyncio.run(scenario())
        assert reload.status_code == 200, reload.text
        events = stream.split("\n\n")
        assert not any(e.startswith("event: error") for e in events), [e for e in events if "error" in e]
        done = next(e for e in events if e.startswith("event: done"))
        assert json.loads(done.split("data: ", 1)[1])["chars"] == 20000
    finally:
        srv.stop()


@pytest.mark.parametrize("extra", [{"seed": None}, {"seed": 0}, {"seed": 2**64 - 1}, {"temperature": 1e-320},
                                   {"temperature": 5e-324}, {"temperature": 1}, {"temperature": 10.0},
                                   {"top_k": 1, "temperature": 0.5},
                                   # JSON Schema's integers include 3.0: schema-driven clients send them
                                   {"top_k": 3.0, "seed": 7.0, "max_chars": 10.0}])
def test_every_documented_sampling_value_answers(client, extra):
    r = client.post(f"/v1/models/{LM}/generate", json={"prompt": PROMPT, "max_chars": 10} | extra)
    assert r.status_code == 200, r.text
    assert r.json()["chars"] == 10 and r.json()["seed"] == extra.get("seed")


@pytest.mark.parametrize("extra,field", [({"seed": 2**64}, "seed"), ({"seed": -1}, "seed"), ({"seed": 1.5}, "seed"),
                                         ({"seed": "7"}, "seed"), ({"temperature": "0.5"}, "temperature"),
                                         ({"temperature": True}, "temperature"), ({"temperature": -0.1}, "temperature"),
                                         ({"temperature": 10.5}, "temperature"), ({"top_k": "3"}, "top_k"),
                                         ({"max_chars": True}, "max_chars")])
def test_anything_else_is_422_naming_the_field(client, extra, field):
    r = client.post(f"/v1/models/{LM}/generate", json={"prompt": PROMPT, "max_chars": 10} | extra)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["message"].startswith(field)


def test_a_vanishing_temperature_is_greedy(client):
    greedy = client.post(f"/v1/models/{LM}/generate", json={"prompt": PROMPT, "max_chars": 40, "temperature": 0})
    tiny = client.post(f"/v1/models/{LM}/generate", json={"prompt": PROMPT, "max_chars": 40, "temperature": 1e-300,
                                                           "seed": 1})
    assert tiny.json()["text"] == greedy.json()["text"]


def test_the_v2_generate_extension_runs_the_same_generation(client):
    v1 = client.post(f"/v1/models/{LM}/generate", json={"prompt": PROMPT, "max_chars": 30, "seed": 3,
                                                         "temperature": 0.7})
    body = {"text_input": PROMPT, "parameters": {"max_tokens": 30, "seed": 3, "temperature": 0.7}}
    v2 = client.post(f"/v2/models/{LM}/generate", json=body)
    assert v2.status_code == 200, v2.text
    assert v2.json() == {"model_name": LM, "model_version": "1", "text_output": v1.json()["text"]}
    with client.stream("POST", f"/v2/models/{LM}/generate_stream", json=body) as stream:
        events = [line for line in stream.iter_lines() if line.startswith("data: ")]
    chunks = [json.loads(line.removeprefix("data: ")) for line in events]
    assert "".join(c["text_output"] for c in chunks) == v1.json()["text"] and chunks[0]["model_name"] == LM
    bad = client.post(f"/v2/models/{LM}/generate", json={"text_input": PROMPT, "parameters": {"max_tokens": 0}})
    assert bad.status_code == 422 and "max_tokens" in bad.json()["error"]
    wrong = client.post("/v2/models/nope/generate", json=body)
    assert wrong.status_code == 404 and "error" in wrong.json()
