"""Safe rollout (docs/rollout.md): version labels, the canary split, shadow traffic and its comparison, promote
and roll back, on real servers of two workers, over /v1, V2 HTTP and gRPC (tritonclient).

Two versions of the fixture sentiment model: version 2 is version 1 with the output layer's bias moved to the
median logit of real reviews (the metadata's sha256 of it updated, resealed), so the two disagree on about
half of them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.conftest import Server, real_reviews, wait_until

NAME = "sentiment-lstm"
BIAS = "head/output_1/Add/ReadVariableOp:0"


@pytest.fixture(scope="module")
def texts() -> list[str]:
    return real_reviews(200)[0]


@pytest.fixture(scope="module")
def versions(tmp_path_factory, model_repo, texts) -> Path:
    """NAME/1 (the fixture) and NAME/2 (its bias moved: disagrees on some texts), resealed."""
    onnx = pytest.importorskip("onnx")
    from onnx import numpy_helper

    from rnnserve.service.core.package import seal, sha256_file

    root = tmp_path_factory.mktemp("rollout") / "models"
    shutil.copytree(model_repo / NAME / "1", root / NAME / "1")
    shutil.copytree(root / NAME / "1", root / NAME / "2")
    p = offline(root / NAME / "1", texts)[:, 1].clip(1e-6, 1 - 1e-6)
    graph = onnx.load(root / NAME / "2" / "model.onnx")
    bias = next(i for i in graph.graph.initializer if i.name == BIAS)
    logits = np.sort(np.log(p / (1 - p)))
    middle = len(logits) // 2  # halfway between two texts' logits: none sits on the new boundary
    moved = numpy_helper.to_array(bias) - (logits[middle - 1] + logits[middle]) / 2
    bias.CopyFrom(numpy_helper.from_array(moved.astype(np.float32), BIAS))
    onnx.save(graph, root / NAME / "2" / "model.onnx")
    metadata = json.loads((root / NAME / "2" / "metadata.json").read_text())
    metadata["onnx"]["sha256"] = sha256_file(root / NAME / "2" / "model.onnx")
    (root / NAME / "2" / "metadata.json").write_text(json.dumps(metadata))
    seal(root / NAME / "2")
    return root


def offline(package: Path, texts: list[str]) -> np.ndarray:
    """A version's probabilities [N, 2] run here, outside any server, one text a run as the tests send them."""
    from rnnserve.service.runtime.base import RuntimeOptions
    from rnnserve.service.runtime.loader import open_model

    with open_model(package, RuntimeOptions()) as model:
        return np.concatenate([model.predict_batch([text]).probabilities for text in texts])


@pytest.fixture()
def repo(tmp_path, versions) -> Path:
    shutil.copytree(versions, tmp_path / "models")
    return tmp_path / "models"


@pytest.fixture()
def serve(repo):
    started = []

    def start(*args: str) -> tuple[Server, httpx.Client]:
        started.append(srv := Server(repo, "--workers", "2", *args))
        srv.wait_ready()  # both workers
        started.append(client := httpx.Client(base_url=srv.url, timeout=30))
        return srv, client

    yield start
    for item in reversed(started):
        item.close() if isinstance(item, httpx.Client) else item.stop()


def predict(client: httpx.Client, text: str = "a fine film", path: str = "", headers: dict | None = None) -> dict:
    r = client.post(f"/v1/models/{NAME}{path}/predict", json={"text": text}, headers=headers)
    assert r.status_code == 200, r.text
    return r.json()


def put_rollout(client: httpx.Client, rollout: dict) -> dict:
    r = client.put(f"/v1/models/{NAME}/rollout", json=rollout)
    assert r.status_code == 200, r.text
    return r.json()["rollout"]


def comparison(client: httpx.Client) -> dict:
    r = client.get(f"/v1/models/{NAME}/rollout")
    assert r.status_code == 200, r.text
    return r.json()["comparison"]


def test_a_ten_percent_canary_and_a_sticky_key_on_two_workers(serve):
    srv, client = serve()
    put_rollout(client, {"labels": {"stable": 1, "canary": 2}, "canary_share": 0.1, "sticky_header": "x-user"})
    served = [predict(client)["version"] for _ in range(2000)]
    assert set(served) == {1, 2}
    assert 160 <= served.count(2) <= 240, served.count(2)  # 8% to 12% of 2,000
    # V2 says which version answered, and a sticky key always gets the same one, whichever worker answers
    v2 = {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["a fine film"]}]}
    for user in ("ada", "bob", "cyd", "dan", "eve", "fay", "gus", "hal"):
        answers = {client.post(f"/v2/models/{NAME}/infer", json=v2, headers={"X-User": user}).json()["model_version"]
                   for _ in range(40)}
        assert len(answers) == 1, (user, answers)
    import tritonclient.grpc as grpcclient  # over gRPC the key is metadata of the same name

    with grpcclient.InferenceServerClient(srv.grpc) as triton:
        text = grpcclient.InferInput("text", [1], "BYTES")
        text.set_data_from_numpy(np.array([b"a fine film"], dtype=object))
        for user in ("ada", "bob", "cyd", "dan"):
            answers = {triton.infer(NAME, [text], headers={"x-user": user}).get_response().model_version
                       for _ in range(20)}
            assert len(answers) == 1, (user, answers)
    keyed = {}
    for user in (f"user-{i}" for i in range(400)):
        keyed[user] = predict(client, headers={"x-user": user})["version"]
    assert 0.05 < list(keyed.values()).count(2) / 400 < 0.16  # the share holds over keys too
    assert all(predict(client, headers={"x-user": u})["version"] == v for u, v in list(keyed.items())[:50])


def test_a_canary_that_is_not_loaded_receives_nothing(serve, repo):
    srv, client = serve()
    put_rollout(client, {"labels": {"stable": 1, "canary": 3}, "canary_share": 0.5})
    assert {predict(client)["version"] for _ in range(100)} == {1}


def test_full_shadow_leaves_every_answer_identical_and_its_agreement_is_the_offline_one(serve, repo, texts):
    # One client in turn, and bounds no run can reach: nothing is shed however a worker's loop interleaves the
    # next request with the last one's shadow run (bench/rollout.py measures the shedding under load).
    srv, client = serve("--shadow-max-pending", "64", "--shadow-max-queue", "64")
    put_rollout(client, {"labels": {"stable": 1}})
    before = [predict(client, text) for text in texts]
    put_rollout(client, {"labels": {"stable": 1, "candidate": 2}, "shadow": "candidate", "shadow_share": 1.0})
    after = [predict(client, text) for text in texts]
    assert after == before  # probabilities, labels and the version: the same answers
    wait_until(lambda: (c := comparison(client))["compared"] and c["compared"][0]["pairs"] + c["shed"]
               + c["shadow_errors"] == len(texts), 30, "every shadow run to be recorded")
    summary = comparison(client)
    assert summary["shed"] == 0 and summary["shadow_errors"] == 0
    [pair] = summary["compared"]
    p1, p2 = offline(repo / NAME / "1", texts), offline(repo / NAME / "2", texts)
    agreed = int((p1.argmax(axis=1) == p2.argmax(axis=1)).sum())
    assert 0 < agreed < len(texts)  # the versions disagree on some texts
    assert (pair["primary"], pair["shadow"], pair["pairs"], pair["agreed"]) == ("1", "2", len(texts), agreed)
    assert pair["agreement"] == agreed / len(texts)
    assert pair["delta_p"][-1]["le"] == "+Inf" and pair["delta_p"][-1]["count"] == len(texts)
    assert summary["latency"]["primary"]["requests"] == summary["latency"]["shadow"]["requests"] == len(texts)
    metrics = client.get("/metrics").text
    assert f'rnnserve_shadow_agreements_total{{model="{NAME}",primary="1",shadow="2"}} {float(agreed)}' in metrics
    assert f'rnnserve_shadow_pairs_total{{model="{NAME}",primary="1",shadow="2"}} {float(len(texts))}' in metrics


def test_promote_and_roll_back_reach_every_worker_before_they_answer(serve):
    srv, client = serve()
    put_rollout(client, {"labels": {"stable": 1, "canary": 2}, "canary_share": 0.5, "shadow": "2",
                         "shadow_share": 0.5})
    assert {predict(client)["version"] for _ in range(60)} == {1, 2}
    r = client.post(f"/v1/models/{NAME}/rollout/rollback")
    assert r.status_code == 200, r.text
    assert r.json()["rollout"]["canary_share"] == 0 and r.json()["rollout"]["shadow"] is None
    assert {predict(client)["version"] for _ in range(200)} == {1}  # at once, on both workers
    put_rollout(client, {"labels": {"stable": 1, "canary": 2}, "canary_share": 0.2})
    r = client.post(f"/v1/models/{NAME}/rollout/promote")
    assert r.status_code == 200, r.text
    assert r.json()["rollout"]["labels"] == {"stable": 2}
    assert {predict(client)["version"] for _ in range(200)} == {2}
    described = client.get(f"/v1/models/{NAME}").json()["rollout"]
    assert described["labels"] == {"stable": 2} and described["source"] == "api"
    # promote needs a canary: the call says so and changes nothing
    r = client.post(f"/v1/models/{NAME}/rollout/promote")
    assert r.status_code == 404 and "canary" in r.json()["error"]["message"]


def test_labels_address_their_version_over_v1_v2_http_and_grpc(serve):
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    srv, client = serve()
    assert client.put(f"/v1/models/{NAME}/labels/stable", json={"version": 1}).status_code == 200
    assert client.put(f"/v1/models/{NAME}/labels/canary", json={"version": 2}).status_code == 200
    for label, version in (("stable", 1), ("canary", 2)):
        assert {predict(client, path=f"/labels/{label}")["version"] for _ in range(20)} == {version}
        with httpclient.InferenceServerClient(srv.url.removeprefix("http://")) as triton:
            text = httpclient.InferInput("text", [1], "BYTES")
            text.set_data_from_numpy(np.array([b"a fine film"], dtype=object))
            answers = {triton.infer(NAME, [text], model_version=label).get_response()["model_version"]
                       for _ in range(20)}
            assert answers == {str(version)}
            assert triton.get_model_metadata(NAME, model_version=label)["versions"] == [str(version)]
        with grpcclient.InferenceServerClient(srv.grpc) as triton:
            text = grpcclient.InferInput("text", [1], "BYTES")
            text.set_data_from_numpy(np.array([b"a fine film"], dtype=object))
            answers = {triton.infer(NAME, [text], model_version=label).get_response().model_version
                       for _ in range(20)}
            assert answers == {str(version)}
            assert triton.is_model_ready(NAME, model_version=label)
    # unversioned: the stable label, not the newest version
    assert {predict(client)["version"] for _ in range(20)} == {1}
    r = client.post(f"/v1/models/{NAME}/labels/nightly/predict", json={"text": "x"})
    assert r.status_code == 404 and "nightly" in r.json()["error"]["message"]
    listing = client.get(f"/v1/models/{NAME}").json()["rollout"]
    assert listing["labels"] == {"stable": 1, "canary": 2}


def test_an_edited_rollout_file_is_picked_up_by_polling(serve, repo):
    srv, client = serve("--repository-poll-s", "0.3")
    assert {predict(client)["version"] for _ in range(20)} == {2}  # no rollout: the newest
    (repo / NAME / "rollout.json").write_text(json.dumps({"labels": {"stable": 1}}))
    wait_until(lambda: {predict(client)["version"] for _ in range(20)} == {1}, 10, "every worker to read the file")
    # an API change stands until the file changes again
    put_rollout(client, {"labels": {"stable": 2}})
    assert {predict(client)["version"] for _ in range(20)} == {2}
    (repo / NAME / "rollout.json").write_text(json.dumps({"labels": {"stable": 1, "canary": 2},
                                                          "canary_share": 1.0}))
    wait_until(lambda: {predict(client)["version"] for _ in range(20)} == {2}
               and client.get(f"/v1/models/{NAME}").json()["rollout"]["source"] == "file", 10, "the edited file")
    # a file that is not a rollout leaves the last good one in force, and says why
    (repo / NAME / "rollout.json").write_text(json.dumps({"labels": {"Bad Label": 1}}))
    wait_until(lambda: client.get(f"/v1/models/{NAME}/rollout").json()["rollout"]["file_problem"], 10,
               "the refusal to be said")
    assert {predict(client)["version"] for _ in range(20)} == {2}


def test_rollout_calls_refuse_what_cannot_be(serve):
    srv, client = serve()
    assert client.put(f"/v1/models/{NAME}/rollout", json={"canary_share": 0.1}).status_code == 422
    assert client.put(f"/v1/models/{NAME}/rollout", json={"labels": {"12": 1}}).status_code == 422
    assert client.put(f"/v1/models/{NAME}/rollout", json={"shadow_share": 2}).status_code == 422
    assert client.put(f"/v1/models/{NAME}/labels/Stable", json={"version": 1}).status_code == 422
    assert client.put("/v1/models/nope/rollout", json={}).status_code == 404
    assert client.get("/v1/models/nope/rollout").status_code == 404
