"""`rnnserve-train ... --models-dir s3://...`: a command writes its package to a bucket (moto's S3 server), where
a server's mirror accepts it; an existing version is refused without --overwrite, before the work."""

import os
import subprocess
import sys
from pathlib import Path

from bench.stores import MotoS3
from rnnserve.service.store import StoreOptions, open_mirror
from tests.conftest import ROOT


def test_quantize_writes_its_package_to_a_bucket(trained_repo, tmp_path, monkeypatch):
    moto = MotoS3("models")
    try:
        url = "s3://models/published"
        command = [sys.executable, "-m", "rnnserve.training", "quantize", str(trained_repo / "sentiment-lstm" / "1"),
                   "--name", "sentiment-int8", "--models-dir", url, "--max-loss", "100"]
        env = {**os.environ, **moto.env()}
        out = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stderr
        assert f"wrote {url}/sentiment-int8/1:" in out.stdout
        assert out.stderr.strip().splitlines()[-1].startswith("uploaded manifest.json")
        again = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        assert again.returncode == 2 and f"{url}/sentiment-int8/1 exists; pass --overwrite" in again.stderr
        for key, value in moto.env().items():
            monkeypatch.setenv(key, value)
        mirror = open_mirror(url, tmp_path / "cache", StoreOptions(), 10**9)
        result = mirror.sync()
        assert result.error is None and result.refused == {}
        assert (Path(mirror.repository) / "sentiment-int8" / "1" / "model.onnx").is_file()
    finally:
        moto.stop()
