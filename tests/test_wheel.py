"""The distribution as a user installs it: a wheel built with `python -m build` installs in a clean virtual
environment under its own name alone (no top-level `service` or `training` to clash with a user's modules),
with the compiled tokenizer and the page, and `rnnserve --models-dir models` serves the bundled packages."""

from __future__ import annotations

import subprocess
import sys
import venv
from pathlib import Path

import httpx
import pytest

from bench.common import wait_http
from tests.conftest import ROOT, free_port


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A fresh virtual environment with the wheel (and its dependencies) installed; its bin/ directory."""
    tmp = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "build", "--wheel", "--outdir", str(tmp / "dist"), str(ROOT)],
                   check=True, capture_output=True, timeout=600)
    wheel, = (tmp / "dist").glob("rnnserve-*.whl")
    venv.create(tmp / "venv", with_pip=True)
    bin_dir = tmp / "venv" / "bin"
    subprocess.run([bin_dir / "python", "-m", "pip", "install", "-q", str(wheel)], check=True, capture_output=True,
                   timeout=900)
    return bin_dir


def test_the_wheel_installs_one_namespace(installed):
    site = subprocess.run([installed / "python", "-c", "import rnnserve, pathlib; "
                           "print(pathlib.Path(rnnserve.__file__).parent.parent)"],
                          check=True, capture_output=True, text=True, cwd="/").stdout.strip()
    ours = {p.name for p in Path(site).iterdir() if p.name.split("-")[0] in ("rnnserve", "service", "training")}
    assert {name for name in ours if not name.endswith(".dist-info")} == {"rnnserve"}
    check = ("from rnnserve.service.core.tokenizer import _fasttok; assert _fasttok; "
             "import rnnserve.service.http.app as app; assert (app.UI_DIR / 'index.html').is_file(); "
             "import rnnserve; assert rnnserve.open_model.__module__ == 'rnnserve.service.runtime.loader'")
    subprocess.run([installed / "python", "-c", check], check=True, cwd="/")
    # A user's own packages named like the repository's folders and the installed ones live side by side.
    user = Path(site).parent / "user-project"
    for name in ("service", "training"):
        (user / name).mkdir(parents=True)
        (user / name / "__init__.py").write_text("OWNER = 'user'\n")
    check = ("import service, training, rnnserve.service.http.app, rnnserve.training.cli; "
             "assert service.OWNER == training.OWNER == 'user'")
    subprocess.run([installed / "python", "-c", check], check=True, cwd=user)


def test_the_installed_command_serves_the_bundled_models(installed):
    port = free_port()
    proc = subprocess.Popen([installed / "rnnserve", "--models-dir", str(ROOT / "models"), "--port", str(port),
                             "--workers", "1", "--no-access-log"], cwd="/", stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_http(f"{url}/health/ready", proc, 120)  # the models load in the background
        r = httpx.post(f"{url}/v1/models/imdb-lstm-small/predict", json={"text": "a wonderful, moving film"})
        assert r.status_code == 200 and r.json()["predictions"][0]["label"] == "positive"
        assert httpx.get(f"{url}/ui/").status_code == 200
    finally:
        proc.terminate()
        proc.wait(timeout=30)
