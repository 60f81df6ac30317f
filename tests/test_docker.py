"""The serving image, built and run for real: healthy, serving, non-root, clean stop; compose too.

Needs a Docker engine, the base images `rnnserve-base` and `rnnserve-build` and wheelhouse/ (docker/ci-setup.sh
makes them; CI runs it). Containers use the host network and are reached on 127.0.0.1 only.
"""

import json
import os
import shutil
import subprocess
import time

import httpx
import pytest
import yaml

from bench.common import wait_http
from tests.conftest import ROOT, free_port

IMAGE = "rnnserve:test"
# 350 MB was the target with 54 MB of bundled packages; the four ensembles of issue 15 added about 40 MB of
# weights and the two distilled students of issue 28 about 12 MB (docs/deployment.md, Docker), so the limit
# keeps the 350 MB of everything else plus today's packages.
MAX_IMAGE_MB = 412


def sh(*cmd, timeout=120, check=True, env=None) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)
    if check and result.returncode:
        raise AssertionError(f"{' '.join(cmd)} exited {result.returncode}:\n{result.stderr[-3000:]}")
    return result


def build(tag: str, *args: str) -> str:
    if not shutil.which("docker") or sh("docker", "info", check=False).returncode != 0:
        pytest.skip("no Docker engine can be reached; run docker/ci-setup.sh (CI does) to start one")
    bases = ("rnnserve-base", "rnnserve-build")
    if any(sh("docker", "image", "inspect", base, check=False).returncode for base in bases) \
            or not (ROOT / "wheelhouse" / ".complete").exists():
        pytest.skip("base images rnnserve-base/rnnserve-build or wheelhouse/ missing; run docker/ci-setup.sh")
    built = sh("docker", "build", "-t", tag, "--build-arg", "BASE_IMAGE=rnnserve-base", "--build-arg",
               "BUILD_IMAGE=rnnserve-build", "--build-arg", "WHEELHOUSE=wheelhouse", *args, ".", timeout=1200,
               check=False)
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    return tag


@pytest.fixture(scope="module")
def image():
    return build(IMAGE)


def test_image_is_slim_and_has_no_tensorflow(image):
    size_mb = int(sh("docker", "image", "inspect", "-f", "{{.Size}}", image).stdout) / 1e6
    print(f"\nruntime image {image}: {size_mb:.0f} MB")
    assert size_mb <= MAX_IMAGE_MB
    probe = "import importlib.util as u; print([m for m in ('tensorflow', 'keras', 'tf2onnx') if u.find_spec(m)])"
    assert sh("docker", "run", "--rm", "--network", "host", image, "python3", "-c", probe).stdout.strip() == "[]"
    assert sh("docker", "run", "--rm", "--network", "host", image, "sh", "-c",
              "command -v gcc cc || true").stdout.strip() == ""
    probe = "from rnnserve.service.core.tokenizer import _fasttok; print(_fasttok is not None)"
    assert sh("docker", "run", "--rm", "--network", "host", image, "python3", "-c", probe).stdout.strip() == "True"


def wait_healthy(container: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = json.loads(sh("docker", "inspect", "-f", "{{json .State}}", container).stdout)
        if state.get("Health", {}).get("Status") == "healthy":
            return
        assert state["Running"], sh("docker", "logs", container, check=False).stderr[-3000:]
        time.sleep(1)
    raise TimeoutError(f"{container} did not become healthy")


def test_container_serves_as_non_root_and_stops_cleanly(image):
    port = free_port()
    name = f"rnnserve-test-{port}"
    sh("docker", "run", "-d", "--network", "host", "--name", name, "-e", f"RNNSERVE_PORT={port}",
       "-e", "RNNSERVE_HOST=127.0.0.1", image)
    try:
        wait_healthy(name)
        assert httpx.get(f"http://127.0.0.1:{port}/health/ready").status_code == 200
        inside = ("import json, urllib.request as u; "
                  f"print(u.urlopen('http://127.0.0.1:{port}/health/ready').status); "
                  f"r = u.Request('http://127.0.0.1:{port}/v1/models/imdb-lstm/predict', "
                  "data=json.dumps({'text': 'A wonderful, moving film. Superb acting.'}).encode(), "
                  "headers={'content-type': 'application/json'}); "
                  "print(json.load(u.urlopen(r))['predictions'][0]['label'])")
        out = sh("docker", "exec", name, "python3", "-c", inside).stdout.split()
        assert out == ["200", "positive"]
        assert sh("docker", "exec", name, "id", "-u").stdout.strip() == "10001"
        started = time.monotonic()
        sh("docker", "stop", "-t", "30", name, timeout=60)
        assert time.monotonic() - started < 30
        state = json.loads(sh("docker", "inspect", "-f", "{{json .State}}", name).stdout)
        assert state["ExitCode"] == 0
        assert "Application shutdown complete" in sh("docker", "logs", name).stderr
    finally:
        sh("docker", "rm", "-f", name, check=False)


def test_compose_file_is_valid_and_brings_the_api_up(image, tmp_path):
    compose = shutil.which("docker-compose")
    if compose is None:
        pytest.skip("docker-compose is not installed; docker/ci-setup.sh installs it")
    port = free_port()
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "RNNSERVE_PORT": str(port), "RNNSERVE_TEST_IMAGE": image}
    for profile in ([], ["--profile", "train"], ["--profile", "scale"], ["--profile", "bucket"]):
        sh(compose, *profile, "-f", "docker-compose.yml", "config", "-q", env=env)
    # The real file merged with the host-network override; published ports cannot go with the host network,
    # and an override can only add ports, so they are dropped from the rendered configuration.
    merged = yaml.safe_load(sh(compose, "-f", "docker-compose.yml", "-f", "tests/docker/compose.host.yml",
                               "config", env=env).stdout)
    merged["services"]["api"].pop("ports", None)
    rendered = tmp_path / "compose.yml"
    rendered.write_text(yaml.safe_dump(merged))
    files = ["-f", str(rendered), "-p", f"rnnservetest{port}"]
    try:
        sh(compose, *files, "up", "-d", "--no-build", "api", env=env, timeout=300)
        wait_http(f"http://127.0.0.1:{port}/health/ready", None, 180)
        r = httpx.post(f"http://127.0.0.1:{port}/v1/models/reuters-gru-ensemble/predict",
                       json={"text": "Oil prices rose as OPEC agreed to cut crude output"})
        assert r.status_code == 200 and r.json()["predictions"][0]["label"] == "crude"
    finally:
        sh(compose, *files, "down", "-v", env=env, check=False, timeout=120)


def test_the_store_image_serves_a_bucket(tmp_path):
    """The image built with the store extra serves a model repository in a bucket (moto's S3 server on the
    host), ready once its first verified load is done."""
    from bench.stores import MotoS3
    from rnnserve.service.store.client import open_store, upload_package

    store_image = build(IMAGE + "-store", "--build-arg", "EXTRAS=store")
    moto = MotoS3("models")
    port = free_port()
    name = f"rnnserve-test-store-{port}"
    try:
        url, env = "s3://models/image", moto.env()
        saved = dict(os.environ)
        os.environ.update(env)
        try:
            upload_package(open_store(url), url, ROOT / "tests" / "fixtures" / "models" / "sentiment-lstm" / "1",
                           "sentiment-lstm/1")
        finally:
            os.environ.clear()
            os.environ.update(saved)
        variables = [arg for key, value in {**env, "RNNSERVE_MODELS_DIR": url, "RNNSERVE_PORT": str(port),
                                            "RNNSERVE_HOST": "127.0.0.1"}.items() for arg in ("-e", f"{key}={value}")]
        sh("docker", "run", "-d", "--network", "host", "--name", name, *variables, store_image)
        wait_healthy(name)
        r = httpx.post(f"http://127.0.0.1:{port}/v1/models/sentiment-lstm/predict", json={"text": "a fine film"})
        assert r.status_code == 200 and r.json()["version"] == 1
    finally:
        sh("docker", "rm", "-f", name, check=False)
        moto.stop()
