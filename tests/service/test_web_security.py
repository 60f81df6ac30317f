"""What a web page on another origin can do to the service (nothing that changes state, and no JSON endpoint
without a CORS preflight), the headers every answer carries, and files served only for what they are."""

from __future__ import annotations

import base64
import hashlib
import re
import shutil

import pytest

from rnnserve.service.core.package import seal
from rnnserve.service.settings import BUNDLED_MODELS
from tests.conftest import LOCAL, in_process, wait_ready

CLASSIFIER, LM, SEQUENCES = "imdb-lstm-small", "reuters-char-rnn", "waves-lstm-tutorial"
FOREIGN = "http://evil.example"
ALLOWED = "http://app.example"
V2_BODY = {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["a great film"]}]}
# Every state-changing call a page could make, with a body that would succeed from the same origin.
CALLS = [
    (f"/v1/models/{CLASSIFIER}/predict", {"json": {"text": "a great film"}}),
    (f"/v1/models/{CLASSIFIER}/versions/1/explain", {"json": {"text": "a great film"}}),
    (f"/v1/models/{LM}/generate", {"json": {"prompt": "The ", "max_chars": 3, "seed": 1}}),
    (f"/v1/models/{CLASSIFIER}/score", {"content": b"text\ngreat film\n", "headers": {"content-type": "text/csv"}}),
    (f"/v1/models/{CLASSIFIER}/score", {"content": b"great film\n", "headers": {"content-type": "text/plain"}}),
    (f"/v2/models/{CLASSIFIER}/infer", {"json": V2_BODY}),
    ("/v2/repository/index", {}),
    (f"/v2/repository/models/{CLASSIFIER}/load", {}),
    (f"/v2/repository/models/{CLASSIFIER}/unload", {}),
    (f"/v2/repository/models/{CLASSIFIER}/unload", {"content": b"{}", "headers": {"content-type": "text/plain"}}),
]
JSON_CALLS = [
    (f"/v1/models/{CLASSIFIER}/predict", b'{"text": "a great film"}'),
    (f"/v1/models/{CLASSIFIER}/explain", b'{"text": "a great film"}'),
    (f"/v1/models/{LM}/generate", b'{"prompt": "The ", "max_chars": 3, "seed": 1}'),
]


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    """Three small bundled packages (a classifier, a language model, a sequence model), copied: no training."""
    models = tmp_path_factory.mktemp("web") / "models"
    for name in (CLASSIFIER, LM, SEQUENCES):
        shutil.copytree(BUNDLED_MODELS / name, models / name)
    return models


@pytest.fixture(scope="module")
def client(repo):
    with in_process(repo, cors_origins=ALLOWED) as c:
        wait_ready(c)
        yield c


def headers_of(kwargs: dict, origin: str | None) -> dict:
    return {**kwargs, "headers": {**kwargs.get("headers", {}), **({"origin": origin} if origin else {})}}


@pytest.mark.parametrize("path,kwargs", CALLS)
def test_a_foreign_origin_cannot_change_state(client, path, kwargs):
    r = client.post(path, **headers_of(kwargs, FOREIGN))
    assert r.status_code == 403, r.text
    error = r.json()["error"]
    message = error if path.startswith("/v2") else error["message"]
    assert "origin" in message and "x-request-id" in r.headers
    if not path.startswith("/v2"):
        assert error["code"] == "forbidden"
    assert client.get(f"/v2/models/{CLASSIFIER}/ready").status_code == 200  # still loaded


@pytest.mark.parametrize("origin", [None, ALLOWED, LOCAL])  # LOCAL: the in-process client's own origin
@pytest.mark.parametrize("path,kwargs", CALLS)
def test_no_origin_an_allowed_one_or_the_same_origin_still_work(client, path, kwargs, origin):
    if path.endswith("/unload"):  # unloading, then loading again, is the state change that must still work
        assert client.post(path, **headers_of(kwargs, origin)).status_code in (200, 415)
        path, kwargs = f"/v2/repository/models/{CLASSIFIER}/load", {}
    r = client.post(path, **headers_of(kwargs, origin))
    assert r.status_code == 200, r.text
    assert client.get(f"/v2/models/{CLASSIFIER}/ready").status_code == 200


def test_a_foreign_origin_may_still_read(client):
    """Reads change nothing, and the browser keeps their answers from a page CORS does not allow."""
    r = client.get("/v1/models", headers={"origin": FOREIGN})
    assert r.status_code == 200 and "access-control-allow-origin" not in r.headers
    r = client.get("/v1/models", headers={"origin": ALLOWED})
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == ALLOWED


@pytest.mark.parametrize("content_type", [None, "text/plain; x=json", "text/plain", "application/x-www-form-urlencoded",
                                          "multipart/form-data; boundary=json", "text/json", "application/jsonx",
                                          "application/xml; note=json", "application/json; charset=latin-1",
                                          "application/+json"])
@pytest.mark.parametrize("path,body", JSON_CALLS)
def test_json_endpoints_take_only_a_json_media_type(client, path, body, content_type):
    """Only a JSON media type: every other one a page can send without a CORS preflight is refused."""
    r = client.post(path, content=body, headers={"content-type": content_type} if content_type else {})
    assert r.status_code == 415, r.text
    assert r.json()["error"]["code"] == "unsupported_media_type"
    assert "application/json" in r.json()["error"]["message"]


@pytest.mark.parametrize("content_type", ["application/json", "Application/JSON; charset=utf-8",
                                          " application/json ;charset=UTF-8", "application/problem+json"])
@pytest.mark.parametrize("path,body", JSON_CALLS)
def test_json_media_types_are_read_properly(client, path, body, content_type):
    assert client.post(path, content=body, headers={"content-type": content_type}).status_code == 200


def test_v2_infer_refuses_a_media_type_that_is_not_json(client):
    r = client.post(f"/v2/models/{CLASSIFIER}/infer", content=b'{"inputs": []}',
                    headers={"content-type": "text/plain; x=json"})
    assert r.status_code == 415 and isinstance(r.json()["error"], str)


def test_v2_infer_keeps_what_tritonclient_sends(client):
    """tritonclient sends no Content-Type (JSON or binary tensors): still served; a browser sending none is
    stopped by its Origin instead."""
    r = client.post(f"/v2/models/{CLASSIFIER}/infer", content=b'{"inputs": [{"name": "text", "shape": [1], '
                    b'"datatype": "BYTES", "data": ["fine"]}]}')
    assert r.status_code == 200, r.text
    for content_type in ("application/octet-stream", "application/json"):
        r = client.post(f"/v2/models/{CLASSIFIER}/infer", json=V2_BODY, headers={"content-type": content_type})
        assert r.status_code == 200, r.text


def test_repository_control_refuses_a_body_that_is_not_json(client):
    r = client.post(f"/v2/repository/models/{CLASSIFIER}/unload", content=b"x", headers={"content-type": "text/plain"})
    assert r.status_code == 415 and isinstance(r.json()["error"], str)
    assert client.get(f"/v2/models/{CLASSIFIER}/ready").status_code == 200
    r = client.post(f"/v2/repository/models/{CLASSIFIER}/load", content=b"{}")  # as tritonclient sends it
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("method,path,kwargs,status", [
    ("GET", "/v1/models", {}, 200),
    ("GET", "/v2", {}, 200),
    ("GET", "/ui/", {}, 200),
    ("GET", "/ui/app.js", {}, 200),
    ("GET", "/docs", {}, 200),
    ("GET", "/docs/static/swagger-ui-bundle.js", {}, 200),
    ("GET", "/openapi.json", {}, 200),
    ("GET", "/health/live", {}, 200),
    ("GET", "/v1/models/nope", {}, 404),
    ("GET", "/v2/models/nope", {}, 404),
    ("POST", f"/v1/models/{CLASSIFIER}/predict", {"json": {"text": "x" * 10}, "headers": {"origin": FOREIGN}}, 403),
    ("POST", f"/v1/models/{CLASSIFIER}/predict", {"content": b"x", "headers": {"content-type": "text/plain"}}, 415),
    ("POST", f"/v1/models/{CLASSIFIER}/predict", {"content": b"x" * (8 * 1024 * 1024 + 1),
                                                  "headers": {"content-type": "application/json"}}, 413),
])
def test_every_answer_forbids_sniffing(client, method, path, kwargs, status):
    r = client.request(method, path, **kwargs)
    assert r.status_code == status, r.text
    assert r.headers["x-content-type-options"] == "nosniff"


@pytest.mark.parametrize("path", ["/ui/", "/ui/app.js", "/docs"])
def test_the_page_and_the_docs_allow_only_this_service_and_no_framing(client, path):
    r = client.get(path)
    policy = dict(d.strip().split(" ", 1) for d in r.headers["content-security-policy"].split(";") if d.strip())
    assert policy["default-src"] == "'self'" and policy["frame-ancestors"] == "'none'"
    assert "unsafe-inline" not in r.headers["content-security-policy"]


def test_the_docs_allow_exactly_their_own_inline_script(client):
    """Swagger UI's page starts itself with one inline script: the policy names it by its hash, nothing else."""
    r = client.get("/docs")
    inline = re.findall(r"<script>(.*?)</script>", r.text, re.S)
    assert len(inline) == 1
    digest = base64.b64encode(hashlib.sha256(inline[0].encode()).digest()).decode()
    policy = r.headers["content-security-policy"]
    assert f"script-src 'self' 'sha256-{digest}'" in policy


def test_with_keys_what_holds_no_data_is_open(repo):
    """A browser's navigation carries no key: the root redirect, /docs and its files and the OpenAPI document
    need none; the document declares both ways to send a key (Swagger UI's Authorize button); data still
    needs one."""
    with in_process(repo, api_keys="k-1") as c:
        r = c.get("/", follow_redirects=False)
        assert r.status_code == 307 and r.headers["location"] == "/ui/"
        assert c.get("/docs").status_code == 200
        assert c.get("/docs/static/swagger-ui-bundle.js").status_code == 200
        doc = c.get("/openapi.json")
        assert doc.status_code == 200
        schemes = doc.json()["components"]["securitySchemes"]
        assert {s["type"] for s in schemes.values()} == {"http", "apiKey"}
        assert any(s.get("name") == "X-API-Key" and s.get("in") == "header" for s in schemes.values())
        assert {k for req in doc.json()["security"] for k in req} == set(schemes)
        assert doc.json()["paths"]["/health/live"]["get"]["security"] == []  # open: no lock shown
        r = c.get("/v1/models")
        assert r.status_code == 401 and r.headers["x-content-type-options"] == "nosniff"
        assert c.get("/v1/models", headers={"x-api-key": "k-1"}).status_code == 200
        assert c.get("/v1/models", headers={"authorization": "Bearer k-1"}).status_code == 200


def test_without_keys_the_document_declares_no_security(client):
    doc = client.get("/openapi.json").json()
    assert "security" not in doc and "securitySchemes" not in doc.get("components", {})


def test_a_plot_that_is_not_a_png_is_not_served(tmp_path):
    """/files/ serves image/png: a package file under a .png name holding anything else (HTML, script) is
    refused, so it can never run as a page of this origin."""
    models = tmp_path / "models"
    shutil.copytree(BUNDLED_MODELS / CLASSIFIER, models / CLASSIFIER)
    (models / CLASSIFIER / "1" / "curves.png").write_bytes(b"<html><script>alert(1)</script></html>")
    (models / CLASSIFIER / "1" / "empty.png").write_bytes(b"")
    seal(models / CLASSIFIER / "1")
    with in_process(models) as c:
        wait_ready(c)
        for name in ("curves.png", "empty.png"):
            r = c.get(f"/v1/models/{CLASSIFIER}/files/{name}")
            assert r.status_code == 404, r.text
            assert r.json()["error"]["code"] == "not_found" and "not a PNG" in r.json()["error"]["message"]
        r = c.get(f"/v1/models/{CLASSIFIER}/versions/1/files/confusion.png")
        assert r.status_code == 200 and r.content.startswith(b"\x89PNG\r\n\x1a\n")
        assert r.headers["content-type"] == "image/png"


def test_a_rebound_name_is_not_the_service_s_own_origin(client, repo):
    """DNS rebinding: a page from a name that resolves to 127.0.0.1 sends a Host and an Origin of that name,
    which match. Bound to loopback, the service's own origin is a loopback name only."""
    rebound = {"host": "evil.example:8000", "origin": "http://evil.example:8000"}
    r = client.post(f"/v2/repository/models/{CLASSIFIER}/unload", headers=rebound)
    assert r.status_code == 403 and client.get(f"/v2/models/{CLASSIFIER}/ready").status_code == 200
    for own in ("127.0.0.1:8000", "localhost:8000", "[::1]:8000"):
        r = client.post(f"/v1/models/{CLASSIFIER}/predict", json={"text": "fine"},
                        headers={"host": own, "origin": f"http://{own}"})
        assert r.status_code == 200, (own, r.text)
    with in_process(repo, host="0.0.0.0") as public:  # reached by any name: Host is whatever clients use
        wait_ready(public)
        r = public.post(f"/v1/models/{CLASSIFIER}/predict", json={"text": "fine"}, headers=rebound)
        assert r.status_code == 200
