"""The V2 sequence extension with the state held by the server, against real servers and real clients
(tritonclient.http and tritonclient.grpc): a text sent in steps gives what the whole text gives, over HTTP with
its steps alternating between two worker processes, and over a gRPC stream; a sequence's
lifetime (end, idle timeout, the least recently used evicted past MAX_SEQUENCES) and the errors."""

from __future__ import annotations

import queue
import time

import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from tritonclient.utils import InferenceServerException

from rnnserve.service.settings import STATE_DIR_ENV
from tests.conftest import ROOT, Server

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
    servers = [Server(models, env={STATE_DIR_ENV: str(state)}) for _ in range(2)]
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
