"""The other recurrent systems end to end: numeric-sequence models (classification, regression, many-to-many),
a character-level classifier and a character language model, each trained here in seconds by the training
code, exported with the parity gate, served by the real app, and answered over HTTP exactly as offline."""

from __future__ import annotations

import asyncio
import json

import httpx
import numpy as np
import onnx
import onnxruntime as ort
import pytest

from rnnserve.service.core.package import read_package
from rnnserve.service.core.sequences import normalize
from tests.conftest import Server, in_process, wait_ready
from tests.fixtures.build import SEQUENCE_MODELS


@pytest.fixture(scope="module")
def client(task_repo):
    with in_process(task_repo, max_generate_chars=300) as c:
        wait_ready(c)
        yield c


def offline(package_dir, x: np.ndarray) -> np.ndarray:
    """The package's own ONNX file and statistics, without the service."""
    meta = read_package(package_dir).metadata
    session = ort.InferenceSession(str(package_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    x = normalize(x, meta.input.normalization)
    return session.run([meta.output.name], {meta.input.name: x})[0]


def waves(n: int, seed: int) -> np.ndarray:
    from rnnserve.training.sequences import waves as make

    return make("waves-kind", n, 10, seed)[0][:, :10, None]


@pytest.mark.parametrize("name", SEQUENCE_MODELS)
def test_sequence_packages_declare_their_input_and_pass_parity(task_repo, name):
    meta = read_package(task_repo / name / "1").metadata
    assert meta.input.name == "sequences" and meta.input.shape == [None, 10, 1]
    stats = meta.input.normalization
    assert len(stats["mean"]) == len(stats["std"]) == 1 and stats["std"][0] > 0
    assert meta.parity["max_abs_diff"] <= 1e-5 and meta.parity["examples"] == 200
    assert "LSTM" in meta.onnx.op_types and "Loop" not in meta.onnx.op_types
    assert meta.task == {"waves-kind": "sequence-classification"}.get(name, "sequence-regression")
    assert meta.output.shape == {"waves-next": [None, 1], "waves-kind": [None, 4],
                                       "waves-steps": [None, 10, 1]}[name]
    # one-way LSTMs: a step-wise graph too, for the sequence extension, gated against the whole graph
    assert meta.stepwise == "stepwise.onnx" and [s["input"] for s in meta.state] == ["state_in_0", "cell_in_0"]
    assert meta.parity["stepwise"]["max_abs_diff"] <= 1e-5 and meta.parity["stepwise"]["chunks"] == 4


@pytest.mark.parametrize("name", SEQUENCE_MODELS)
def test_a_sequence_sent_in_steps_gives_what_the_whole_gives(client, name):
    """The V2 sequence extension on numeric models: chunks of 3, 1, 4 and 2 steps, the server carrying the
    state; the last step's answer (per-step models: every step's, in order) equals the whole sequence's."""
    x = waves(1, seed=11)

    def infer(chunk: np.ndarray, **parameters) -> np.ndarray:
        body = {"inputs": [{"name": "sequences", "datatype": "FP32", "shape": list(chunk.shape),
                            "data": chunk.ravel().tolist()}], "parameters": parameters}
        r = client.post(f"/v2/models/{name}/infer", json=body)
        assert r.status_code == 200, r.text
        out = r.json()["outputs"][0]
        return np.array(out["data"], np.float32).reshape(out["shape"])

    def stats() -> dict:
        return client.get(f"/v2/models/{name}/stats").json()["model_stats"][0]

    whole = infer(x)
    before = stats()
    cuts = [0, 3, 4, 8, 10]
    steps = [infer(x[:, a:b], sequence_id=f"{name}-1", sequence_start=a == 0, sequence_end=b == 10)
             for a, b in zip(cuts, cuts[1:])]
    got = np.concatenate(steps, axis=1) if whole.ndim == 3 else steps[-1]
    assert np.abs(got - whole).max() <= 1e-5
    after = stats()  # the steps are runs like any other in the statistics extension
    for key in ("inference_count", "execution_count"):
        assert after[key] - before[key] == 4, key
    for stat in ("success", "compute_infer"):
        assert after["inference_stats"][stat]["count"] - before["inference_stats"][stat]["count"] == 4, stat


def test_sequence_predictions_over_http_equal_offline(client, task_repo):
    x = waves(20, seed=11)
    for name in SEQUENCE_MODELS:
        want = offline(task_repo / name / "1", x)
        r = client.post(f"/v1/models/{name}/predict", json={"sequences": x.tolist(), "return_probabilities": True})
        assert r.status_code == 200, r.text
        preds = r.json()["predictions"]
        if name == "waves-kind":
            labels = read_package(task_repo / name / "1").labels
            assert labels == ["sine", "square", "triangle", "sawtooth"]
            assert [p["label"] for p in preds] == [labels[i] for i in want.argmax(1)]
            got = np.array([[p["probabilities"][k] for k in labels] for p in preds])
            assert "tokens" not in preds[0]
        elif name == "waves-steps":
            got = np.array([p["values"] for p in preds])[..., None]
        else:
            got = np.array([[p["value"]] for p in preds])
        assert np.abs(got - want).max() <= 1e-6
    # [N][T] is accepted for one feature per step, and gives the same answer
    flat = client.post("/v1/models/waves-next/predict", json={"sequences": x[..., 0].tolist()}).json()
    assert [p["value"] for p in flat["predictions"]] == pytest.approx(offline(task_repo / "waves-next" / "1", x)[:, 0],
                                                                      abs=1e-6)


def test_v2_takes_fp32_tensors_json_and_binary(client, task_repo):
    x = waves(5, seed=12)
    meta = client.get("/v2/models/waves-kind").json()
    assert meta["inputs"] == [{"name": "sequences", "datatype": "FP32", "shape": [-1, 10, 1]}]
    want = offline(task_repo / "waves-kind" / "1", x)
    body = {"inputs": [{"name": "sequences", "datatype": "FP32", "shape": [5, 10, 1], "data": x.ravel().tolist()}]}
    out = {o["name"]: o for o in client.post("/v2/models/waves-kind/infer", json=body).json()["outputs"]}
    assert np.abs(np.array(out["probabilities"]["data"]).reshape(5, 4) - want).max() <= 1e-6
    nested = {"inputs": [body["inputs"][0] | {"data": x.tolist()}]}  # nested exactly as the shape
    out = {o["name"]: o for o in client.post("/v2/models/waves-kind/infer", json=nested).json()["outputs"]}
    assert np.abs(np.array(out["probabilities"]["data"]).reshape(5, 4) - want).max() <= 1e-6
    header = json.dumps({"inputs": [{"name": "sequences", "datatype": "FP32", "shape": [5, 10, 1],
                                     "parameters": {"binary_data_size": x.size * 4}}],
                         "outputs": [{"name": "values", "parameters": {"binary_data": True}}]}).encode()
    r = client.post("/v2/models/waves-steps/infer", content=header + x.astype("<f4").tobytes(),
                    headers={"Inference-Header-Content-Length": str(len(header))})
    assert r.status_code == 200, r.text
    n = int(r.headers["Inference-Header-Content-Length"])
    values = np.frombuffer(r.content[n:], "<f4").reshape(5, 10, 1)
    assert np.abs(values - offline(task_repo / "waves-steps" / "1", x)).max() <= 1e-6


@pytest.mark.parametrize("path,body,status,words", [
    ("/v1/models/waves-next/predict", {"texts": ["a film"]}, 422, "numeric sequences"),
    ("/v1/models/waves-next/predict", {"sequences": [[[1.0]] * 9]}, 422, "[N, 10, 1]"),
    ("/v1/models/waves-next/predict", {"sequences": [[[1.0, 2.0]] * 10]}, 422, "[N, 10, 1]"),
    ("/v1/models/waves-next/predict", {"sequences": [[1.0] * 10] * 257}, 413, "limit is 256"),
    ("/v1/models/waves-next/predict", {"sequences": [["x"] * 10]}, 422, "sequences"),
    ("/v1/models/chars/predict", {"sequences": [[[1.0]] * 10]}, 422, "classifies text"),
    ("/v1/models/waves-next/explain", {"text": "a film"}, 422, "sequence-regression model"),
    ("/v1/models/lm/predict", {"sequences": [[[1.0]] * 10]}, 422, "send 'texts' or 'text'"),
    ("/v1/models/chars/generate", {"prompt": "a"}, 422, "text-classification model"),
    ("/v1/models/waves-kind/score", {"text": "a"}, 422, "sequence-classification model"),
    ("/v1/models/lm/generate", {"prompt": ""}, 422, "prompt is empty"),
    ("/v1/models/lm/generate", {"prompt": "a", "max_chars": 301}, 413, "limit of 300"),
    ("/v1/models/lm/generate", {"prompt": "a", "temperature": -1}, 422, "temperature"),
    ("/v2/models/waves-next/infer", {"inputs": [{"name": "sequences", "datatype": "FP64", "shape": [1, 10, 1],
                                                 "data": [0.0] * 10}]}, 422, "FP32"),
    ("/v2/models/waves-next/infer", {"inputs": [{"name": "sequences", "datatype": "FP32", "shape": [1, 10, 1],
                                                 "data": [0.0] * 9}]}, 422, "10 elements"),
    ("/v2/models/lm/infer", {"inputs": []}, 422, "one input tensor named 'text'"),
    ("/v2/models/chars/infer", {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["a"]}],
                                "parameters": {"sequence_id": 7, "sequence_start": True}},
     422, "keeps no state between requests"),
    ("/v2/models/waves-next/infer", {"inputs": [{"name": "sequences", "datatype": "FP32", "shape": [1, 11, 1],
                                                 "data": [0.0] * 11}], "parameters": {"sequence_id": 7,
                                                                                      "sequence_start": True}},
     422, "[N, 1..10, 1]"),
    ("/v2/models/waves-next/infer", {"inputs": [{"name": "sequences", "datatype": "FP32", "shape": [1, 3, 1],
                                                 "data": [0.0] * 3}], "parameters": {"sequence_start": True}},
     422, "need a sequence_id"),
    # strict numbers, and nesting that follows the declared shape (issue 21)
    ("/v1/models/waves-next/predict", {"sequences": [[True] * 10]}, 422, "sequences"),
    ("/v1/models/waves-next/predict", {"sequences": [["0.5"] * 10]}, 422, "sequences"),
    ("/v2/models/waves-next/infer", {"inputs": [{"name": "sequences", "datatype": "FP32", "shape": [1, 10, 1],
                                                 "data": ["0.5"] * 10}]}, 422, "JSON numbers"),
    ("/v2/models/waves-next/infer", {"inputs": [{"name": "sequences", "datatype": "FP32", "shape": [1, 10, 1],
                                                 "data": [True] * 10}]}, 422, "JSON numbers"),
    ("/v2/models/waves-next/infer", {"inputs": [{"name": "sequences", "datatype": "FP32", "shape": [1, 10, 1],
                                                 "data": [[0.0] * 5, [0.0] * 5]}]}, 422, "follow the shape"),
    ("/v2/models/waves-next/infer", {"inputs": [{"name": "sequences", "datatype": "FP32", "shape": [1, 10, 1],
                                                 "data": [[[0.0] * 10]]}]}, 422, "follow the shape"),
])
def test_task_errors_are_clear_4xx(client, path, body, status, words):
    r = client.post(path, json=body)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert words in (error if isinstance(error, str) else error["message"])


def test_nan_is_refused(client):
    body = b'{"sequences": [[NaN, 1, 1, 1, 1, 1, 1, 1, 1, 1]]}'  # the parser takes NaN; the model must not
    r = client.post("/v1/models/waves-next/predict", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 422 and "finite" in r.json()["error"]["message"]
    r = client.post("/v1/models/waves-next/predict", json={"sequences": [[1e39] * 10]})  # float32 infinity
    assert r.status_code == 422 and "finite" in r.json()["error"]["message"]


def test_a_finite_value_the_normalisation_takes_to_infinity_is_refused_over_every_protocol(client, task_repo):
    """3e38 is a float32, but (3e38 - mean) / 0.742 is not: the model would see infinity (issue 34)."""
    import tritonclient.grpc as triton_grpc
    from tritonclient.utils import InferenceServerException

    values = [3e38] + [0.0] * 9
    r = client.post("/v1/models/waves-next/predict", json={"sequences": [values]})
    assert r.status_code == 422 and "sequences[0][0][0] = 3e+38" in r.json()["error"]["message"]
    tensor = {"name": "sequences", "datatype": "FP32", "shape": [1, 10, 1]}
    r = client.post("/v2/models/waves-next/infer", json={"inputs": [tensor | {"data": values}]})
    assert r.status_code == 422 and "beyond float32's range after the package's normalisation" in r.json()["error"]
    raw = np.array(values, "<f4").tobytes()
    header = json.dumps({"inputs": [tensor | {"parameters": {"binary_data_size": len(raw)}}]}).encode()
    r = client.post("/v2/models/waves-next/infer", content=header + raw,
                    headers={"inference-header-content-length": str(len(header))})
    assert r.status_code == 422 and "sequences[0][0][0]" in r.json()["error"]
    srv = Server(task_repo)
    try:
        srv.wait_ready()
        grpc_input = triton_grpc.InferInput("sequences", [1, 10, 1], "FP32")
        grpc_input.set_data_from_numpy(np.array(values, np.float32).reshape(1, 10, 1))
        with pytest.raises(InferenceServerException) as err:
            triton_grpc.InferenceServerClient(srv.grpc).infer("waves-next", [grpc_input])
        assert err.value.status() == "StatusCode.INVALID_ARGUMENT" and "sequences[0][0][0]" in err.value.message()
    finally:
        srv.stop()


def test_model_list_shows_each_task(client):
    tasks = {m["name"]: m["task"] for m in client.get("/v1/models").json()["models"]}
    assert tasks == {"waves-next": "sequence-regression", "waves-kind": "sequence-classification",
                     "waves-steps": "sequence-regression", "chars": "text-classification",
                     "lm": "text-generation"}
    described = client.get("/v1/models/waves-next").json()
    assert described["input"]["steps"] == 10 and described["input"]["features"] == 1


def test_char_classifier_serves_what_its_onnx_gives(client, task_repo):
    from rnnserve.service.core.tokenizer import Tokenizer

    pkg = read_package(task_repo / "chars" / "1")
    assert pkg.tokenizer.char_level and pkg.metadata.parity["label_disagreements"] == 0
    texts = ["A wonderful, moving film!", "Dull. Far too long...", "ÉTÉ 🎬"]
    ids, _ = Tokenizer(pkg.tokenizer)(texts, dynamic=True)
    want = ort.InferenceSession(str(pkg.path / "model.onnx")).run(["probabilities"], {"input_ids": ids})[0]
    r = client.post("/v1/models/chars/predict", json={"texts": texts, "return_probabilities": True})
    got = np.array([[p["probabilities"][k] for k in pkg.labels] for p in r.json()["predictions"]])
    assert np.abs(got - want).max() <= 1e-6
    assert r.json()["predictions"][0]["tokens"]["kept"] == len(texts[0]) + 1  # every character, and the start


def keras_greedy(task_repo, prompt: str, n: int) -> str:
    """The Keras model recomputing the whole prefix at every step: what the step-wise graph must equal."""
    import keras

    from rnnserve.service.core.tokenizer import Tokenizer

    spec = read_package(task_repo / "lm" / "1").tokenizer
    model = keras.models.load_model(task_repo.parent / "runs" / "lm" / "model.keras")
    ids = Tokenizer(spec).encode(prompt)[0]
    first = spec.index_from + 1
    for _ in range(n):
        p = model.predict(np.array([ids]), verbose=0)[0, -1]
        ids.append(first + int(p[first:].argmax()))
    return "".join(spec.words[i - spec.index_from - 1] for i in ids[-n:])


def test_generation_equals_the_keras_model_recomputing_the_prefix(client, task_repo):
    meta = read_package(task_repo / "lm" / "1").metadata
    assert meta.task == "text-generation" and meta.parity["max_abs_diff"] <= 1e-5
    assert [s["input"] for s in meta.state] == ["state_in_0", "cell_in_0", "state_in_1", "cell_in_1"]
    model = onnx.load(task_repo / "lm" / "1" / "model.onnx")  # the opset's IR version, not onnx's newest
    assert model.ir_version == onnx.helper.find_min_ir_version_for(list(model.opset_import))
    r = client.post("/v1/models/lm/generate", json={"prompt": "The company said", "max_chars": 30,
                                                   "temperature": 0})
    assert r.status_code == 200, r.text
    assert r.json()["text"] == keras_greedy(task_repo, "The company said", 30)
    assert r.json()["chars"] == 30


def test_seeded_generation_is_deterministic_and_streams_the_same_text(client):
    body = {"prompt": "Oil prices ", "max_chars": 120, "temperature": 0.8, "top_k": 10, "seed": 7}
    a = client.post("/v1/models/lm/generate", json=body).json()["text"]
    assert a == client.post("/v1/models/lm/generate", json=body).json()["text"] and len(a) == 120
    assert a != client.post("/v1/models/lm/generate", json=body | {"seed": 8}).json()["text"]
    with client.stream("POST", "/v1/models/lm/generate", json=body | {"stream": True}) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        events = r.read().decode().split("\n\n")
    chars = [json.loads(e.removeprefix("data: "))["text"] for e in events if e.startswith("data: ")]
    done = next(e for e in events if e.startswith("event: done"))
    assert "".join(chars) == a and json.loads(done.split("data: ", 1)[1])["text"] == a


def test_generations_are_limited_and_cannot_starve_classification(task_repo):
    """Against a real server: generations past MAX_GENERATIONS get 503; a classification sent while the
    others generate is answered long before they end."""
    srv = Server(task_repo, env={"RNNSERVE_MAX_GENERATIONS": "3", "RNNSERVE_MAX_GENERATE_CHARS": "20000"})
    try:
        srv.wait_ready()

        async def scenario():
            async with httpx.AsyncClient(base_url=srv.url, timeout=120) as http:
                long = {"prompt": "The", "max_chars": 20000, "temperature": 1.0, "seed": 1}
                gens = [asyncio.create_task(http.post("/v1/models/lm/generate", json=long)) for _ in range(3)]
                await asyncio.sleep(0.5)  # the three are running
                extra = await http.post("/v1/models/lm/generate", json=long)
                started = asyncio.get_running_loop().time()
                r = await http.post("/v1/models/waves-kind/predict", json={"sequences": waves(4, 1).tolist()})
                answered = asyncio.get_running_loop().time() - started
                done = [g.done() for g in gens]
                results = await asyncio.gather(*gens)
                return extra, r, answered, done, results

        extra, r, answered, done, results = asyncio.run(scenario())
        assert extra.status_code == 503 and extra.headers["retry-after"] == "1"
        assert "running 3 generations" in extra.json()["error"]["message"]
        assert r.status_code == 200 and not any(done), (answered, done)
        assert all(g.status_code == 200 and g.json()["chars"] == 20000 for g in results)
    finally:
        srv.stop()
