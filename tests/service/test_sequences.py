"""The V2 sequence extension with the state held by the server, against real servers and real clients
(tritonclient.http and tritonclient.grpc): a text sent in steps gives what the whole text gives, over HTTP with
its steps alternating between two worker processes, and over a gRPC stream; a sequence's
lifetime (end, idle timeout, the least recently used evicted past MAX_SEQUENCES) and the errors."""

from __future__ import annotations

import queue
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from tritonclient.utils import InferenceServerException

from rnnserve.service.settings import STATE_DIR_ENV
from tests.conftest import ROOT, Server, in_process, wait_ready
from tests.service.storage import full_directory

LM = "reuters-char-rnn"
TEXT = ("Oil prices rose sharply on Monday after the company said it would cut output by ten percent, "
        "traders said. " * 4)  # 444 characters: more than one of the runtime's 256-character windows


def lm_repo(tmp_path):
    """The bundled language model, the numeric model (its step-wise graph beside), a classifier (no state)."""
    models = tmp_path / "models"
    models.mkdir()
    for name in (LM, "imdb-lstm-small", "waves-lstm-tutorial"):
        (models / name).symlink_to(ROOT / "models" / name)
    return models


def text_input(module, text: str):
    tensor = module.InferInput("text", [1], "BYTES")
    tensor.set_data_from_numpy(np.array([text.encode()], dtype=object))
    return tensor


def chunks(text: str, size: int) -> list[str]:
    return [text[i:i + size] for i in range(0, len(text), size)]


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory):
    """Two worker processes sharing the server's state directory, as `--workers 2` makes them, but each on a
    port of its own, so a test decides which one a step reaches (a server's workers share one socket, and
    which takes a connection is the kernel's choice)."""
    models, state = lm_repo(tmp_path_factory.mktemp("seq")), tmp_path_factory.mktemp("state")
    servers = [Server(models, "--max-sequences", "4", env={STATE_DIR_ENV: str(state)}) for _ in range(2)]
    try:
        for srv in servers:
            srv.wait_ready(120)
        yield servers
    finally:
        for srv in servers:
            srv.stop()


def test_steps_equal_the_whole_text_over_http_across_workers_and_over_a_grpc_stream(two_workers):
    hosts = [srv.url.removeprefix("http://") for srv in two_workers]
    whole = triton_http.InferenceServerClient(hosts[0]).infer(LM, [text_input(triton_http, TEXT)])
    expected = whole.as_numpy("probabilities")
    assert expected.shape == (1, 86) and abs(float(expected.sum()) - 1) < 1e-5
    for sequence_id in (42, "review-7"):  # integer and string ids
        steps = chunks(TEXT, 37)
        for i, step in enumerate(steps):  # each step on the other worker
            result = triton_http.InferenceServerClient(hosts[i % 2]).infer(
                LM, [text_input(triton_http, step)], sequence_id=sequence_id, sequence_start=i == 0,
                sequence_end=i == len(steps) - 1)
        assert np.abs(result.as_numpy("probabilities") - expected).max() <= 1e-5
        assert result.as_numpy("label")[0] == whole.as_numpy("label")[0]

    results: queue.Queue = queue.Queue()
    client = triton_grpc.InferenceServerClient(two_workers[1].grpc)
    client.start_stream(callback=lambda result, error: results.put((result, error)))
    steps = chunks(TEXT, 11)
    for i, step in enumerate(steps):
        client.async_stream_infer(LM, [text_input(triton_grpc, step)], sequence_id=9, sequence_start=i == 0,
                                  sequence_end=i == len(steps) - 1)
    answers = [results.get(timeout=30) for _ in steps]
    client.stop_stream()
    assert all(error is None for _, error in answers), [error for _, error in answers if error]
    assert np.abs(answers[-1][0].as_numpy("probabilities") - expected).max() <= 1e-5


def test_a_sequence_ends_expires_and_is_evicted_with_a_clear_error(tmp_path):
    srv = Server(lm_repo(tmp_path), "--sequence-idle-s", "1", "--max-sequences", "2")
    try:
        srv.wait_ready(120)
        http = triton_http.InferenceServerClient(srv.url.removeprefix("http://"))

        def step(sequence_id, start=False, end=False, text="Oil ", **options):
            return http.infer(LM, [text_input(triton_http, text)], sequence_id=sequence_id,
                              sequence_start=start, sequence_end=end, **options)

        def refused(sequence_id, status="400", **options) -> str:
            with pytest.raises(InferenceServerException) as err:
                step(sequence_id, **options)
            assert err.value.status() == status
            return err.value.message()

        step(1, start=True)
        step(1, end=True)
        assert f"sequence 1 of model '{LM}' is not open" in refused(1)
        for sequence_id in ("a", "b", "c"):  # three starts, room for two: "a", the least recently used, goes
            step(sequence_id, start=True)
        assert "evicted as the least recently used of 2 (MAX_SEQUENCES)" in refused("a")
        step("b")
        step("c")
        # Refused requests change nothing: a start that starts "c" over, or whose input is refused, evicts
        # no other sequence; a step whose outputs are refused does not move "b" on.
        step("c", start=True)
        assert "the text is empty" in refused("d", status="422", start=True, text="")
        assert "unknown output 'nope'" in refused("b", status="422", text="net profit",
                                                  outputs=[triton_http.InferRequestedOutput("nope")])
        moved = step("b", text="net profit").as_numpy("probabilities")
        whole = http.infer(LM, [text_input(triton_http, "Oil Oil net profit")]).as_numpy("probabilities")
        assert np.abs(moved - whole).max() <= 1e-5
        step("c")
        time.sleep(1.5)  # past SEQUENCE_IDLE_S: an expiry is time passing, there is nothing else to wait on
        assert "idle past 1 s (SEQUENCE_IDLE_S)" in refused("b")

        grpc_client = triton_grpc.InferenceServerClient(srv.grpc)
        results: queue.Queue = queue.Queue()
        grpc_client.start_stream(callback=lambda result, error: results.put((result, error)))
        grpc_client.async_stream_infer(LM, [text_input(triton_grpc, "x")], sequence_id=77)  # never started
        grpc_client.async_stream_infer(LM, [text_input(triton_grpc, "x")], sequence_id=77, sequence_start=True)
        (_, first), (second, error) = results.get(timeout=30), results.get(timeout=30)
        grpc_client.stop_stream()
        assert "sequence 77" in str(first) and "is not open" in str(first)  # the stream stayed open
        assert error is None and second.as_numpy("probabilities").shape == (1, 86)
    finally:
        srv.stop()


def test_models_that_keep_no_state_refuse_sequences(two_workers):
    http = triton_http.InferenceServerClient(two_workers[0].url.removeprefix("http://"))
    two = triton_http.InferInput("text", [2], "BYTES")
    two.set_data_from_numpy(np.array([b"a", b"b"], dtype=object))
    with pytest.raises(InferenceServerException) as err:
        http.infer(LM, [two], sequence_id=3, sequence_start=True)
    assert "a sequence's request carries one input, not 2" in err.value.message()
    grpc_client = triton_grpc.InferenceServerClient(two_workers[0].grpc)
    with pytest.raises(InferenceServerException) as err:
        grpc_client.infer("imdb-lstm-small", [text_input(triton_grpc, "a film")], sequence_id=3, sequence_start=True)
    assert err.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "keeps no state between requests" in err.value.message()
    with pytest.raises(InferenceServerException) as err:  # a step that is not a start: the same answer
        http.infer("imdb-lstm-small", [text_input(triton_http, "a film")], sequence_id=3)
    assert err.value.status() == "422" and "keeps no state between requests" in err.value.message()
    assert {"sequence", "sequence(string_id)"} <= set(grpc_client.get_server_metadata().extensions)
    assert {"sequence", "sequence(string_id)"} <= set(http.get_server_metadata()["extensions"])


def test_a_numeric_sequence_in_steps_over_a_grpc_stream(two_workers):
    """The bundled waves-lstm-tutorial through its step-wise graph: 10 steps sent 2, 5 and 3 at a time."""
    x = np.random.default_rng(5).normal(size=(1, 10, 1)).astype(np.float32)

    def tensor(chunk: np.ndarray) -> triton_grpc.InferInput:
        t = triton_grpc.InferInput("sequences", list(chunk.shape), "FP32")
        t.set_data_from_numpy(chunk)
        return t

    client = triton_grpc.InferenceServerClient(two_workers[0].grpc)
    whole = client.infer("waves-lstm-tutorial", [tensor(x)]).as_numpy("values")
    results: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: results.put((result, error)))
    for a, b in ((0, 2), (2, 7), (7, 10)):
        client.async_stream_infer("waves-lstm-tutorial", [tensor(x[:, a:b])], sequence_id=11,
                                  sequence_start=a == 0, sequence_end=b == 10)
    answers = [results.get(timeout=30) for _ in range(3)]
    client.stop_stream()
    assert all(error is None for _, error in answers), [error for _, error in answers if error]
    assert np.abs(answers[-1][0].as_numpy("values") - whole).max() <= 1e-5


def v2_step(url: str, text: str, model: str = LM, **parameters) -> httpx.Response:
    """One V2 infer request on a connection of its own."""
    body = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": [text]}], "parameters": parameters}
    return httpx.post(f"{url}/v2/models/{model}/infer", json=body, timeout=60)


def probabilities(r: httpx.Response) -> np.ndarray:
    assert r.status_code == 200, r.text
    return np.array(next(o["data"] for o in r.json()["outputs"] if o["name"] == "probabilities"))


def test_concurrent_steps_of_one_sequence_on_two_workers_are_kept_or_refused_never_lost(two_workers):
    """30 steps of one sequence at once, alternating between the workers: each is answered and kept, or
    refused with 409; the final state is the start's and every kept step's (issue 34: 3 of 32 were lost)."""
    urls = [srv.url for srv in two_workers]
    assert v2_step(urls[0], "Oil ", sequence_id=500, sequence_start=True).status_code == 200
    with ThreadPoolExecutor(30) as pool:
        answers = list(pool.map(lambda i: v2_step(urls[i % 2], "x", sequence_id=500), range(30)))
    assert {r.status_code for r in answers} <= {200, 409}, [r.text for r in answers if r.status_code not in (200, 409)]
    assert all("was stepped by another request" in r.json()["error"] for r in answers if r.status_code == 409)
    kept = sum(r.status_code == 200 for r in answers)
    last = probabilities(v2_step(urls[1], ".", sequence_id=500, sequence_end=True))
    whole = probabilities(v2_step(urls[0], "Oil " + "x" * kept + "."))
    assert np.abs(last - whole).max() <= 1e-5, f"{kept} steps kept"


def test_concurrent_starts_on_two_workers_keep_max_sequences_exactly(two_workers):
    urls = [srv.url for srv in two_workers]
    ids = [f"start-{i}" for i in range(12)]
    with ThreadPoolExecutor(12) as pool:
        starts = list(pool.map(lambda i: v2_step(urls[i % 2], "a", sequence_id=ids[i], sequence_start=True),
                               range(12)))
    assert {r.status_code for r in starts} == {200}
    still_open = [v2_step(urls[0], "b", sequence_id=i).status_code for i in ids]
    assert still_open.count(200) == 4 and set(still_open) == {200, 400}  # --max-sequences 4


def test_a_full_or_read_only_state_directory_refuses_steps_with_503_and_changes_nothing(task_repo, tmp_path,
                                                                                           monkeypatch):
    """The state cannot be stored: the step answers 503 saying so, the sequence stays as it was, no other
    sequence is evicted for it, no temporary file is left; the server goes on serving."""
    with full_directory(tmp_path / "state") as state:
        monkeypatch.setenv(STATE_DIR_ENV, str(state.path))
        with in_process(task_repo, max_sequences=2) as client:
            wait_ready(client)

            def step(sequence_id, text="Oil ", **flags):
                body = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": [text]}],
                        "parameters": {"sequence_id": sequence_id, **flags}}
                return client.post("/v2/models/lm/infer", json=body)

            def whole(text):
                return client.post("/v2/models/lm/infer", json={"inputs": [
                    {"name": "text", "datatype": "BYTES", "shape": [1], "data": [text]}]})

            assert step(1, sequence_start=True).status_code == 200
            assert step(2, sequence_start=True).status_code == 200
            state.fill()
            for refused in (step(3, sequence_start=True), step(1, "net ")):
                assert refused.status_code == 503, refused.text
                assert "the sequence state could not be stored" in refused.json()["error"]
            assert whole("a text").status_code == 200
            assert client.get("/health/ready").status_code == 200
            assert not list(state.path.rglob("*.tmp"))
            state.free()
            # Neither 1 nor 2 was evicted for the start that failed, and 1 did not move on.
            assert np.abs(probabilities(step(1, "net ")) - probabilities(whole("Oil net "))).max() <= 1e-5
            assert step(2, "net ").status_code == 200
            state.read_only()
            try:
                assert step(1, "profit").status_code == 503 and step(4, sequence_start=True).status_code == 503
            finally:
                state.read_only(False)
            assert np.abs(probabilities(step(1, "profit")) - probabilities(whole("Oil net profit"))).max() <= 1e-5
