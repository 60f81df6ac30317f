"""Package validation and readiness: a corrupt package is reported while the others keep serving."""

import json
import shutil

import httpx
import pytest

from rnnserve.service.core.package import PackageError, read_package, seal
from tests.conftest import Server


@pytest.fixture()
def broken_repo(model_repo, tmp_path):
    repo = tmp_path / "models"
    shutil.copytree(model_repo, repo)
    shutil.copytree(repo / "sentiment-lstm" / "1", repo / "sentiment-lstm" / "2")
    with open(repo / "sentiment-lstm" / "2" / "model.onnx", "ab") as fh:
        fh.write(b"corrupt")  # sha256 no longer matches
    shutil.copytree(repo / "topics-gru", repo / "no-tokenizer")
    (repo / "no-tokenizer" / "1" / "tokenizer.json").unlink()
    return repo


def test_read_package_reasons(broken_repo):
    with pytest.raises(PackageError, match="sha256"):
        read_package(broken_repo / "sentiment-lstm" / "2")
    with pytest.raises(PackageError, match="missing tokenizer.json"):
        read_package(broken_repo / "no-tokenizer" / "1")
    meta_path = broken_repo / "topics-gru" / "1" / "metadata.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps(meta | {"maxlen": 7}))
    with pytest.raises(PackageError, match="metadata.json was changed"):
        read_package(broken_repo / "topics-gru" / "1")
    seal(meta_path.parent)  # as its writer would have
    with pytest.raises(PackageError, match="maxlen"):
        read_package(broken_repo / "topics-gru" / "1")


@pytest.mark.parametrize("change, field", [
    (lambda m: m["input"].pop("name"), "input.name: Field required"),
    (lambda m: m["serving"].update(max_batch_size="many"), "serving.max_batch_size"),
    (lambda m: m.update(task="summarization"), "task: Input should be"),
    (lambda m: m.update(labels="positive"), "labels: Input should be a valid array"),
    (lambda m: m.update(extra_field=1), "extra_field: Extra inputs are not permitted"),
    (lambda m: m["onnx"].update(sha256=None), "onnx.sha256"),
])
def test_a_bad_metadata_field_is_named(broken_repo, change, field):
    """metadata.json is typed (PackageMetadata): a wrong field is named, not a KeyError."""
    meta_path = broken_repo / "topics-gru" / "1" / "metadata.json"
    meta = json.loads(meta_path.read_text()) | {"serving": {}}
    change(meta)
    meta_path.write_text(json.dumps(meta))
    seal(meta_path.parent)
    with pytest.raises(PackageError, match=field.replace(".", r"\.")):
        read_package(broken_repo / "topics-gru" / "1")


def test_corrupt_packages_do_not_stop_the_others(broken_repo):
    srv = Server(broken_repo)
    try:
        srv.wait_ready()
        models = {m["name"]: m for m in httpx.get(f"{srv.url}/v1/models").json()["models"]}
        assert models["no-tokenizer"]["state"] == "failed"
        assert "tokenizer.json" in models["no-tokenizer"]["failed_versions"][0]["reason"]
        lstm = models["sentiment-lstm"]
        assert lstm["version"] == 1 and "sha256" in lstm["failed_versions"][0]["reason"]
        r = httpx.post(f"{srv.url}/v1/models/sentiment-lstm/predict", json={"text": "fine"})
        assert r.status_code == 200 and r.json()["version"] == 1
        r = httpx.post(f"{srv.url}/v1/models/no-tokenizer/predict", json={"text": "fine"})
        assert r.status_code == 503 and "tokenizer.json" in r.json()["error"]["message"]
        assert "rnnserve_models_failed 2.0" in httpx.get(f"{srv.url}/metrics").text
    finally:
        srv.stop()


def test_ready_only_after_loading_and_live_before(model_repo):
    srv = Server(model_repo)
    try:
        srv.wait_live()
        # Liveness answers while models may still load; readiness turns 200 only when all are loaded.
        srv.wait_ready()
        body = httpx.get(f"{srv.url}/health/ready").json()
        assert body == {"status": "ready", "models_loaded": 2, "models_failed": 0}
    finally:
        srv.stop()


def test_missing_repository_exits_with_message(tmp_path):
    srv = Server(tmp_path / "nothing")
    assert srv.proc.wait(timeout=30) == 2
    assert "does not exist" in srv.stop()


def test_not_ready_until_models_loaded(model_repo):
    """The real app before its lifespan has loaded anything: live 200, ready 503, predict 503."""
    import asyncio

    from rnnserve.service.app import create_app
    from rnnserve.service.settings import Settings

    async def main():
        app = create_app(Settings(models_dir=model_repo, grpc_port=0))
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
            live = await c.get("/health/live")
            ready = await c.get("/health/ready")
            v2_ready = await c.get("/v2/health/ready")
            pred = await c.post("/v1/models/sentiment-lstm/predict", json={"text": "x"})
        return live, ready, v2_ready, pred

    live, ready, v2_ready, pred = asyncio.run(main())
    assert live.status_code == 200 and ready.status_code == 503 and v2_ready.status_code == 503
    assert pred.status_code == 503 and pred.headers["retry-after"] == "1"
