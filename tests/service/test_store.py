"""Models in a bucket (service/store): served from a verified local copy, never from the bucket, against real
stores on loopback: moto's S3 server (signed requests checked against an IAM user's keys) and Azurite. GCS: no
emulator that obstore can talk to installs here (PyPI's gcp-storage-emulator stubs the JSON API, obstore speaks
the XML API; Debian and npm have none); gs:// runs the same mirror and is tested up to the network (an
unreachable endpoint named), see test_gcs_without_a_usable_emulator_*."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import obstore
import pytest

from bench.stores import Azurite, MotoS3
from rnnserve.service.store import StoreError, StoreOptions, open_mirror
from rnnserve.service.store.client import aws_profile, open_store, upload_package
from tests.conftest import FIXTURES, ROOT, Server, free_port, in_process, wait_ready, wait_until

NAME = "sentiment-lstm"
PACKAGE = FIXTURES / "models" / NAME / "1"
OTHER = FIXTURES / "models" / "topics-gru" / "1"
POLL_S = 0.2


@pytest.fixture(scope="module")
def moto():
    server = MotoS3("models")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def azurite(tmp_path_factory):
    server = Azurite(tmp_path_factory.mktemp("azurite"), "models")
    yield server
    server.stop()


@pytest.fixture()
def bucket(moto, monkeypatch, request):
    """A fresh prefix of moto's bucket, the AWS variables set for this process: (url, store)."""
    for key, value in moto.env().items():
        monkeypatch.setenv(key, value)
    url = f"s3://models/{request.node.name.replace('[', '-').strip(']')}"
    return url, open_store(url)


def publish(store, url: str, key: str, package: Path = PACKAGE, **kwargs) -> None:
    upload_package(store, url, package, key, **kwargs)


def predict(client, text: str = "a fine film"):
    return client.post(f"/v1/models/{NAME}/predict", json={"text": text})


def index(client) -> dict[str, dict]:
    return {f"{row['name']}/{row['version']}": row for row in client.post("/v2/repository/index").json()}


def listed_after(cache: Path, moment: float, times: int = 2):
    """A condition: the cache's bucket listing is newer than `moment` by `times` poll periods (polls happened)."""
    def condition() -> bool:
        try:
            return json.loads((cache / "state.json").read_text())["listed_at"] > moment + (times - 1) * POLL_S
        except (FileNotFoundError, ValueError):
            return False
    return condition


def serve(url: str, cache: Path, **settings):
    return in_process(url, repository_poll_s=POLL_S, models_cache_dir=cache, **settings)


def test_a_bucket_is_served_from_its_verified_copy_and_followed(bucket, tmp_path):
    url, store = bucket
    publish(store, url, f"{NAME}/1")
    with serve(url, tmp_path / "cache") as client:
        wait_ready(client)
        assert predict(client).json()["version"] == 1
        assert index(client)[f"{NAME}/1"]["state"] == "READY"
        # What the registry reads is the cache's link to a package named by its manifest's sha256.
        link = tmp_path / "cache" / "repository" / NAME / "1"
        assert link.is_symlink() and (link / "model.onnx").read_bytes() == (PACKAGE / "model.onnx").read_bytes()
        publish(store, url, f"{NAME}/2")
        wait_until(lambda: predict(client).json()["version"] == 2, 2 * POLL_S + 3, "version 2 to be served")
        obstore.delete(store, [f"{NAME}/2/{f.name}" for f in PACKAGE.iterdir()])
        wait_until(lambda: predict(client).json()["version"] == 1, 2 * POLL_S + 3, "version 2 to go")
        assert f"{NAME}/2" not in index(client)


def test_a_rollout_file_in_the_bucket_travels_with_the_mirror(bucket, tmp_path):
    url, store = bucket
    publish(store, url, f"{NAME}/1")
    publish(store, url, f"{NAME}/2")
    obstore.put(store, f"{NAME}/rollout.json", json.dumps({"labels": {"stable": 1}}).encode())
    with serve(url, tmp_path / "cache") as client:
        wait_ready(client)
        assert {predict(client).json()["version"] for _ in range(10)} == {1}
        obstore.put(store, f"{NAME}/rollout.json", json.dumps({"labels": {"stable": 1, "canary": 2},
                                                               "canary_share": 1.0}).encode())
        wait_until(lambda: predict(client).json()["version"] == 2, 2 * POLL_S + 3, "the edited rollout")
        obstore.delete(store, [f"{NAME}/rollout.json"])
        # The mirror removes the cached file, then the same poll's control reads the rollout again: wait for both.
        wait_until(lambda: client.get(f"/v1/models/{NAME}").json()["rollout"]["source"] == "none", 2 * POLL_S + 3,
                   "the rollout to go")
        assert not (tmp_path / "cache" / "repository" / NAME / "rollout.json").exists()


def test_azure_blob_storage_through_azurite(azurite, monkeypatch, tmp_path):
    for key, value in azurite.env().items():
        monkeypatch.setenv(key, value)
    url = "az://models/repository"
    store = open_store(url)
    publish(store, url, f"{NAME}/1")
    with serve(url, tmp_path / "cache") as client:
        wait_ready(client)
        assert predict(client).json()["version"] == 1
        publish(store, url, f"{NAME}/3")
        wait_until(lambda: predict(client).json()["version"] == 3, 2 * POLL_S + 3, "version 3 to be served")


def test_an_upload_cut_short_is_never_served(bucket, tmp_path):
    """The writer's order: the files, the manifest last. Cut after two files, the version does not exist for
    readers; finished, it is served."""
    url, store = bucket
    publish(store, url, f"{NAME}/1")

    def cut(name: str, size: int) -> None:
        if name == "model.onnx":
            raise KeyboardInterrupt  # the writer stopped mid-way (Ctrl-C, a killed job)

    with serve(url, tmp_path / "cache") as client:
        wait_ready(client)
        with pytest.raises(KeyboardInterrupt):
            publish(store, url, f"{NAME}/2", uploaded=cut)
        cut_at = time.time()
        wait_until(listed_after(tmp_path / "cache", cut_at), 10, "two polls after the cut")
        assert f"{NAME}/2" not in index(client)
        assert {predict(client).json()["version"] for _ in range(5)} == {1}
        publish(store, url, f"{NAME}/2")
        wait_until(lambda: predict(client).json()["version"] == 2, 2 * POLL_S + 3, "the finished upload")


def test_a_manifest_uploaded_before_its_files_is_refused_until_they_arrive(bucket, tmp_path):
    """A copy that does not keep the order (`aws s3 cp --recursive` goes by name: manifest.json before
    model.onnx): the version is refused with the file named, then served once the files are all there."""
    url, store = bucket
    publish(store, url, f"{NAME}/1")
    with serve(url, tmp_path / "cache") as client:
        wait_ready(client)
        for filename in ("manifest.json", "metadata.json"):
            obstore.put(store, f"{NAME}/2/{filename}", PACKAGE / filename)
        wait_until(lambda: f"{NAME}/2" in index(client), 2 * POLL_S + 3, "the refusal")
        row = index(client)[f"{NAME}/2"]
        assert row["state"] == "UNAVAILABLE" and "missing model.onnx" in row["reason"], row
        assert predict(client).json()["version"] == 1
        for filename in ("model.onnx", "tokenizer.json"):
            obstore.put(store, f"{NAME}/2/{filename}", PACKAGE / filename)
        wait_until(lambda: predict(client).json()["version"] == 2, 2 * POLL_S + 3, "the whole version")
        assert index(client)[f"{NAME}/2"]["state"] == "READY"


def _tamper(store, key: str) -> None:
    """The object's bytes changed, its size kept: only the sha256 can tell."""
    data = bytearray(bytes(obstore.get(store, key).bytes()))
    data[len(data) // 2] ^= 0xFF
    obstore.put(store, key, bytes(data))


def test_a_tampered_file_is_refused_and_the_old_version_keeps_serving(bucket, tmp_path):
    url, store = bucket
    publish(store, url, f"{NAME}/1")
    with serve(url, tmp_path / "cache") as client:
        wait_ready(client)
        publish(store, url, f"{NAME}/2", uploaded=lambda name, size: name == "tokenizer.json" and _tamper(
            store, f"{NAME}/2/model.onnx"))
        wait_until(lambda: f"{NAME}/2" in index(client), 2 * POLL_S + 3, "the refusal")
        row = index(client)[f"{NAME}/2"]
        assert row["state"] == "UNAVAILABLE" and "model.onnx was changed" in row["reason"], row
        assert {predict(client).json()["version"] for _ in range(5)} == {1}
        assert not (tmp_path / "cache" / "repository" / NAME / "2").exists()  # never where the registry reads
        # The served version's own file changed in the bucket: refused, and its verified copy keeps serving.
        _tamper(store, f"{NAME}/1/tokenizer.json")
        def failed() -> dict[str, str]:
            return {row["version"]: row["reason"] for row in client.get(f"/v1/models/{NAME}").json()["failed_versions"]}

        wait_until(lambda: "1" in failed(), 2 * POLL_S + 3, "the served version's refusal")
        reason = failed()["1"]
        assert "tokenizer.json was changed" in reason and "keeps serving" in reason
        assert predict(client).json()["version"] == 1


def test_a_download_cut_short_resumes_and_a_damaged_staged_file_is_fetched_again(bucket, tmp_path):
    url, store = bucket
    publish(store, url, f"{NAME}/1")
    manifest = (PACKAGE / "manifest.json").read_bytes()
    digest = hashlib.sha256(manifest).hexdigest()
    stage = tmp_path / "cache" / "staging" / digest
    mirror = open_mirror(url, tmp_path / "cache", StoreOptions(), 10**9)
    # What a sync killed mid-way leaves: a complete file, a damaged "complete" one, half of a third.
    (stage / "metadata.json").parent.mkdir(parents=True)
    (stage / "metadata.json").write_bytes((PACKAGE / "metadata.json").read_bytes())
    tokenizer = bytearray((PACKAGE / "tokenizer.json").read_bytes())
    tokenizer[10] ^= 1
    (stage / "tokenizer.json").write_bytes(tokenizer)
    (stage / ".model.onnx.part").write_bytes((PACKAGE / "model.onnx").read_bytes()[:1000])
    result = mirror.sync()
    assert result.error is None and result.refused == {}
    served = tmp_path / "cache" / "repository" / NAME / "1"
    assert {f.name: f.read_bytes() for f in served.iterdir()} == {f.name: f.read_bytes() for f in PACKAGE.iterdir()}
    assert not stage.exists()


def test_an_explicit_load_fetches_the_bucket_without_polling(bucket, tmp_path):
    url, store = bucket
    publish(store, url, f"{NAME}/1")
    with in_process(url, models_cache_dir=tmp_path / "cache") as client:
        wait_ready(client)
        publish(store, url, f"{NAME}/2")
        assert client.post(f"/v2/repository/models/{NAME}/load").status_code == 200
        assert predict(client).json()["version"] == 2
        assert client.post("/v2/repository/models/absent/load").status_code == 404


def test_the_cache_is_bounded_and_cleaned_of_versions_gone(bucket, tmp_path, monkeypatch):
    from rnnserve.service.store import mirror as mirror_module

    monkeypatch.setattr(mirror_module, "RETIRE_GRACE_S", 0.0)  # no worker reads an old copy here
    url, store = bucket
    publish(store, url, f"{NAME}/1")
    size = sum(f.stat().st_size for f in PACKAGE.iterdir())
    cache = tmp_path / "cache"
    with serve(url, cache, models_cache_max_bytes=int(size * 1.5)) as client:
        wait_ready(client)
        publish(store, url, f"{NAME}/2", OTHER)  # another package (the same one would share the copy)
        wait_until(lambda: f"{NAME}/2" in index(client), 2 * POLL_S + 3, "the refusal")
        assert "the model cache is full" in index(client)[f"{NAME}/2"]["reason"]
        obstore.delete(store, [f"{NAME}/1/{f.name}" for f in PACKAGE.iterdir()])  # room: tried again, served
        wait_until(lambda: predict(client).json().get("version") == 2, 2 * POLL_S + 3, "version 2 in the room made")
        wait_until(lambda: len(list((cache / "packages").iterdir())) == 1, 2 * POLL_S + 3, "version 1's copy to go")
        assert f"{NAME}/1" not in index(client)


def test_credentials_from_an_aws_profile(moto, tmp_path, monkeypatch):
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL", "AWS_REGION"):
        monkeypatch.delenv(key, raising=False)
    credentials = tmp_path / "credentials"
    credentials.write_text(f"[minio]\naws_access_key_id = {moto.key_id}\naws_secret_access_key = {moto.secret}\n"
                           f"endpoint_url = {moto.endpoint}\nregion = us-east-1\n[assumed]\nrole_arn = arn:x\n")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(credentials))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "absent"))
    monkeypatch.setenv("AWS_PROFILE", "minio")
    url = "s3://models/profile"
    upload_package(open_store(url), url, PACKAGE, f"{NAME}/1")
    assert open_mirror(url, tmp_path / "cache", StoreOptions(), 10**9).sync().error is None
    assert (tmp_path / "cache" / "repository" / NAME / "1" / "manifest.json").is_file()
    for profile, says in (("assumed", "role_arn, which needs an AWS SDK"), ("nowhere", "is in neither")):
        monkeypatch.setenv("AWS_PROFILE", profile)
        with pytest.raises(StoreError, match=says):
            aws_profile()


def _start_failing(env: dict[str, str], url: str, tmp_path: Path, secret: str) -> str:
    """A real server whose store cannot be read: live, not ready, the reason in readiness and in its log at
    start, the secret nowhere."""
    srv = Server(url, "--models-cache-dir", str(tmp_path / "cache"), "--store-timeout-s", "5", env=env)
    try:
        srv.wait_live()
        wait_until(lambda: "problems" in httpx.get(srv.url + "/health/ready").json(), 30, "the first sync")
        ready = httpx.get(srv.url + "/health/ready")
        assert ready.status_code == 503 and ready.json()["status"] == "loading", ready.text
        reason = ready.json()["problems"][0]
    finally:
        log = srv.stop()
    assert reason in log.replace('\\"', '"') and "model store unavailable" in log
    assert secret not in log and secret not in reason
    return reason


@pytest.mark.parametrize("case", ["wrong secret", "unreachable endpoint"])
def test_wrong_credentials_and_an_unreachable_endpoint_say_so_at_start_and_in_readiness(moto, tmp_path, case):
    secret = "wrong-secret-value" if case == "wrong secret" else moto.secret
    env = moto.env(secret)
    if case == "unreachable endpoint":
        env["AWS_ENDPOINT_URL"] = f"http://127.0.0.1:{free_port()}"
    reason = _start_failing(env, "s3://models/anything", tmp_path, secret)
    assert reason.startswith(f"model store s3://models/anything at {env['AWS_ENDPOINT_URL']}: ")
    assert ("the store refused the credentials (SignatureDoesNotMatch)" if case == "wrong secret"
            else "cannot reach the endpoint: connection refused") in reason


def test_wrong_azure_key_says_so(azurite, tmp_path):
    secret = "d3Jvbmcga2V5IGZvciB0aGUgdGVzdA=="
    reason = _start_failing(azurite.env(secret), "az://models/repository", tmp_path, secret)
    assert "the store refused the credentials" in reason


def test_gcs_without_a_usable_emulator_an_unreachable_endpoint_is_named(tmp_path, monkeypatch):
    """No GCS emulator obstore can talk to installs here: the gs:// store opens from its variables, and the
    mirror names the endpoint it could not reach."""
    endpoint = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("GOOGLE_BEARER_TOKEN", "token-for-the-test")
    mirror = open_mirror("gs://models/repository", tmp_path / "cache", StoreOptions(endpoint=endpoint, timeout_s=5),
                         10**9)
    error = mirror.sync().error
    assert error == f"model store gs://models/repository at {endpoint}: cannot reach the endpoint: connection refused"


def test_a_cache_others_may_write_to_is_refused_at_start(tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    cache.chmod(0o777)
    out = subprocess.run([sys.executable, "-m", "rnnserve.service", "--models-dir", "s3://models/x",
                          "--models-cache-dir", str(cache)], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "writable by others" in out.stderr, out.stderr


def _store_for(env: dict[str, str], url: str):
    """A store opened with these variables (the writer's), this process's own left as they were."""
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    try:
        return open_store(url)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key)
            else:
                os.environ[key] = value


def _version(srv: Server) -> int:
    return httpx.post(f"{srv.url}/v1/models/{NAME}/predict", json={"text": "a fine film"}).json()["version"]


@pytest.mark.slow
def test_every_worker_serves_a_new_version_within_two_polls(moto, tmp_path):
    url, env = "s3://models/workers", moto.env()
    store = _store_for(env, url)
    upload_package(store, url, PACKAGE, f"{NAME}/1")
    srv = Server(url, "--workers", "2", "--repository-poll-s", "0.5", "--models-cache-dir", str(tmp_path / "cache"),
                 env=env)
    try:
        srv.wait_ready()  # both workers
        assert {_version(srv) for _ in range(20)} == {1}
        upload_package(store, url, PACKAGE, f"{NAME}/2")
        # two poll periods, and the download, load and warm-up of a tiny package
        wait_until(lambda: all(_version(srv) == 2 for _ in range(20)), 2 * 0.5 + 3,
                   "every worker to serve the new version")
    finally:
        srv.stop()


@pytest.mark.slow
def test_two_servers_on_one_bucket_converge(moto, tmp_path):
    """Two replicas, each with its own cache, follow one bucket."""
    url, env = "s3://models/replicas", moto.env()
    store = _store_for(env, url)
    upload_package(store, url, PACKAGE, f"{NAME}/1")
    servers = [Server(url, "--repository-poll-s", "0.5", "--models-cache-dir", str(tmp_path / f"cache{i}"), env=env)
               for i in range(2)]
    try:
        for srv in servers:
            srv.wait_ready()
        upload_package(store, url, PACKAGE, f"{NAME}/2")
        wait_until(lambda: [_version(srv) for srv in servers] == [2, 2], 2 * 0.5 + 3, "both replicas on version 2")
        obstore.delete(store, [f"{NAME}/2/{f.name}" for f in PACKAGE.iterdir()])
        wait_until(lambda: [_version(srv) for srv in servers] == [1, 1], 2 * 0.5 + 3, "both back on version 1")
    finally:
        for srv in servers:
            srv.stop()


def test_a_writer_uploads_the_manifest_last_and_refuses_an_existing_version(bucket, capsys):
    """What `rnnserve-train export/import/distill/quantize --models-dir s3://...` do around the package they
    write (training/publish.py); the commands themselves: tests/training/test_publish.py."""
    from rnnserve.training.publish import PublishError, check_published, models_target

    url, store = bucket
    with models_target(url, NAME, 1, overwrite=False) as folder:
        shutil.copytree(PACKAGE, folder / NAME / "1")  # what a command writes
    uploaded = [line.split()[1] for line in capsys.readouterr().err.splitlines()]
    assert uploaded[-1] == "manifest.json" and sorted(uploaded) == sorted(f.name for f in PACKAGE.iterdir())
    with pytest.raises(PublishError, match=f"{url}/{NAME}/1 exists; pass --overwrite"):
        check_published(url, NAME, 1, overwrite=False)
    with pytest.raises(RuntimeError), models_target(url, NAME, 2, overwrite=False) as folder:
        shutil.copytree(PACKAGE, folder / NAME / "2")
        raise RuntimeError("the command failed after writing")  # nothing is uploaded
    assert [m["path"] for batch in obstore.list(store, f"{NAME}/2") for m in batch] == []


def test_a_store_error_is_one_sentence_without_secrets():
    from obstore.exceptions import GenericError

    from rnnserve.service.store.client import store_error

    raw = ("Generic MicrosoftAzure error: Error performing list request: Error performing GET "
           "http://127.0.0.1:1/devstoreaccount1/models?restype=container&sv=2024-01-01&sig=SECRETSIG in 5ms - Server "
           "returned non-2xx status code: 403 Forbidden: <Error><Code>AuthenticationFailed</Code></Error>\n\nDebug")
    error = str(store_error(GenericError(raw), "az://models/x"))
    assert error == ("model store az://models/x: the store refused the credentials (AuthenticationFailed); check the "
                     "ones the server is given")
    assert "SECRETSIG" not in str(store_error(GenericError(raw.replace("403", "500").replace(
        "AuthenticationFailed", "InternalError")), "az://models/x"))


def test_models_store_comes_from_a_bucket_url_only():
    from pydantic import ValidationError

    from rnnserve.service.settings import Settings

    settings = Settings(models_dir="gs://bucket/models", models_cache_dir="/var/cache/x")
    assert (settings.models_store, settings.models_dir) == ("gs://bucket/models", Path("/var/cache/x/repository"))
    assert Settings(**{k: v for k, v in settings.model_dump().items()}).models_store == "gs://bucket/models"
    with pytest.raises(ValidationError, match="give the bucket URL as models_dir"):
        Settings(models_store="s3://bucket/models")
