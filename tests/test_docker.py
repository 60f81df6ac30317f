"""The serving image, built and run for real: healthy, serving, non-root, clean stop; compose too.

Needs a Docker engine, the base images `rnnserve-base` and `rnnserve-build` and wheelhouse/ (docker/ci-setup.sh
makes them; CI runs it). Containers use the host network and are reached on 127.0.0.1 only.
"""

import json
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


@pytest.fixture(scope="module")
def image():
    if not shutil.which("docker") or sh("docker", "info", check=False).returncode != 0:
        pytest.skip("no Docker engine can be reached; run docker/ci-setup.sh (CI does) to start one")
    bases = ("rnnserve-base", "rnnserve-build")
    if any(sh("docker", "image", "inspect", base, check=False).returncode for base in bases) \
            or not (ROOT / "wheelhouse" / ".complete").exists():
        pytest.skip("base images rnnserve-base/rnnserve-build or wheelhouse/ missing; run docker/ci-setup.sh")
    build = sh("docker", "build", "-t", IMAGE, "--build-arg", "BASE_IMAGE=rnnserve-base", "--build-arg",
               "BUILD_IMAGE=rnnserve-build", "--build-arg", "WHEELHOUSE=wheelhouse", ".", timeout=1200, check=False)
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    return IMAGE


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
    for profile in ([], ["--profile", "train"], ["--profile", "scale"]):
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
