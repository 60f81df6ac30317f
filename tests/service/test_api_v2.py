"""Open Inference Protocol V2 through the official tritonclient, binary and JSON."""

import httpx
import numpy as np
import pytest
import tritonclient.http as triton

from tests.conftest import real_reviews
from tests.service.test_api_v1 import offline_predict


@pytest.fixture()
def client(server):
    c = triton.InferenceServerClient(url=server.url.removeprefix("http://"))
    yield c
    c.close()


def test_health_and_metadata(client):
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("sentiment-lstm") and client.is_model_ready("topics-gru", "1")
    assert not client.is_model_ready("nope")
    meta = client.get_model_metadata("topics-gru")
    assert meta["inputs"][0] == {"name": "text", "datatype": "BYTES", "shape": [-1, 1]}
    assert [o["shape"] for o in meta["outputs"]] == [[-1, 3], [-1, 1]]
    assert client.get_server_metadata()["name"] == "rnnserve"


@pytest.mark.parametrize("binary", [True, False])
def test_infer_matches_offline(client, model_repo, binary):
    texts, _ = real_reviews(5)
    texts.append("")
    inp = triton.InferInput("text", [len(texts)], "BYTES")
    inp.set_data_from_numpy(np.array([t.encode() for t in texts], dtype=np.object_), binary_data=binary)
    outputs = [triton.InferRequestedOutput("probabilities", binary_data=binary),
               triton.InferRequestedOutput("label", binary_data=binary)]
    result = client.infer("topics-gru", [inp], outputs=outputs, request_id="req-7")
    probs, labels = offline_predict(model_repo / "topics-gru" / "1", texts)
    assert result.get_response()["id"] == "req-7"
    assert np.allclose(result.as_numpy("probabilities"), probs, atol=1e-6)
    assert result.as_numpy("label").shape == (len(texts), 1)  # [N, 1]: the metadata's [-1, 1]
    got = [x.decode() if isinstance(x, bytes) else x for x in result.as_numpy("label").ravel()]
    assert got == [labels[i] for i in probs.argmax(1)]


def test_infer_default_outputs_versioned(client):
    inp = triton.InferInput("text", [2, 1], "BYTES")
    inp.set_data_from_numpy(np.array([[b"great"], [b"awful"]], dtype=np.object_))
    result = client.infer("sentiment-lstm", [inp], model_version="1")
    assert result.as_numpy("probabilities").shape == (2, 2)


def test_errors_use_v2_shape(client, server):
    inp = triton.InferInput("text", [1], "BYTES")
    inp.set_data_from_numpy(np.array([b"x"], dtype=np.object_))
    with pytest.raises(triton.InferenceServerException, match="not found"):
        client.infer("nope", [inp])
    bad = [
        ({"inputs": [{"name": "wrong", "shape": [1], "datatype": "BYTES", "data": ["x"]}]}, 422),
        ({"inputs": [{"name": "text", "shape": [2], "datatype": "BYTES", "data": ["x"]}]}, 422),
        ({"inputs": [{"name": "text", "shape": [1], "datatype": "FP32", "data": [1.0]}]}, 422),
        ({"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": [3]}]}, 422),
        ({"inputs": []}, 422),
    ]
    for body, status in bad:
        r = httpx.post(f"{server.url}/v2/models/sentiment-lstm/infer", json=body)
        assert r.status_code == status and isinstance(r.json()["error"], str), (body, r.text)
    r = httpx.post(f"{server.url}/v2/models/sentiment-lstm/infer", content=b"{oops")
    assert r.status_code == 400 and isinstance(r.json()["error"], str)
    r = httpx.post(f"{server.url}/v2/models/sentiment-lstm/infer", content=b'{"inputs": []}xx',
                   headers={"Inference-Header-Content-Length": "999"})
    assert r.status_code == 400


def test_text_count_is_checked_before_decoding(api):
    """A binary tensor declaring more texts than the limit is refused from its shape, before any decoding;
    one that holds more elements than its shape declares is refused at the first extra element."""
    header = (b'{"inputs": [{"name": "text", "shape": [%d], "datatype": "BYTES", '
              b'"parameters": {"binary_data_size": %d}}]}')
    many = b"\x00\x00\x00\x00" * 300_000
    body = header % (300_000, len(many))
    r = api.post("/v2/models/sentiment-lstm/infer", content=body + many,
                 headers={"Inference-Header-Content-Length": str(len(body))})
    assert r.status_code == 413 and "limit is 256" in r.json()["error"]
    body = header % (2, len(many))
    r = api.post("/v2/models/sentiment-lstm/infer", content=body + many,
                 headers={"Inference-Header-Content-Length": str(len(body))})
    assert r.status_code == 422 and "holds more" in r.json()["error"]


def test_deeply_nested_json_is_a_client_error(api):
    r = api.post("/v2/models/sentiment-lstm/infer", content=b"[" * 5000, headers={"content-type": "application/json"})
    assert r.status_code == 400 and "x-request-id" in r.headers
    nested = {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": [[["deep"]]]}]}
    r = api.post("/v2/models/sentiment-lstm/infer", json=nested)
    assert r.status_code == 422 and isinstance(r.json()["error"], str)


def test_every_route_answers_errors_in_the_model_it_declares(api):
    """The error body follows the route's declared `responses` (what OpenAPI documents), not its URL: each
    route with a model name answers an unknown one in its own declared shape, and so does an error raised
    before routing (a wrong method)."""
    seen = set()
    for route in api.app.state.routes:
        if "{name}" not in route.path:
            continue
        model = route.responses[400]["model"]
        path = route.path.replace("{name}", "nope").replace("{version}", "1")
        for method in route.methods:
            r = api.request(method, path, json={})
            assert r.status_code >= 400, (method, path)
            model.model_validate(r.json())
            seen.add(model.__name__)
        r = api.request("PATCH", path)
        assert r.status_code == 405 and model.model_validate(r.json())
    assert seen == {"ErrorResponse", "V2Error"}
