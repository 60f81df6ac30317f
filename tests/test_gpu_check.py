"""What the GPU check needs that runs without a GPU: the provider choice and its CPU fallback, the check's
arguments, and the whole check run with the CPU in the GPU's place (bench/gpu_check.py --provider cpu)."""

import json
import logging
import os
import shutil
import subprocess
import sys

import onnxruntime as ort
import pytest

from rnnserve.service.runtime.session import CUDA, OrtSession
from tests.conftest import ROOT, in_process, real_reviews, wait_ready

HAS_CUDA_BUILD = CUDA in ort.get_available_providers()


def test_auto_takes_the_cpu_without_onnxruntime_gpu_and_says_so(model_repo, caplog):
    with caplog.at_level(logging.INFO, logger="rnnserve.session"):
        session = OrtSession((model_repo / "sentiment-lstm" / "1" / "model.onnx").read_bytes(), "auto")
    if HAS_CUDA_BUILD:
        assert session.provider == CUDA
    else:
        assert session.provider == "CPUExecutionProvider"
        assert "no usable CUDA" in caplog.text


@pytest.mark.skipif(HAS_CUDA_BUILD, reason="onnxruntime-gpu is installed here")
def test_provider_cuda_without_onnxruntime_gpu_fails_the_load_and_names_the_extra(model_repo):
    with in_process(model_repo, provider="cuda") as client:
        wait_ready(client)  # loading has ended
        listing = client.get("/v1/models").json()["models"]
    reasons = {m["name"]: [f["reason"] for f in m["failed_versions"]] for m in listing if m["state"] == "failed"}
    assert set(reasons) == {"sentiment-lstm", "topics-gru"}
    assert all("install the [gpu] extra" in r for rs in reasons.values() for r in rs), reasons


def run(args: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300, **kw)


def test_the_check_refuses_bad_arguments(tmp_path):
    check = [sys.executable, "bench/gpu_check.py"]
    for bad in (["--n", "0"], ["--seconds", "0"], ["--models-dir", str(tmp_path / "none")],
                ["--texts", str(tmp_path / "none.jsonl")], ["--provider", "rocm"]):
        done = run(check + bad)
        assert done.returncode == 2 and "error:" in done.stderr, (bad, done.stderr)
    done = run(["bash", "bench/gpu_check.sh", "--wheelhouse", str(tmp_path / "none")])
    assert done.returncode == 2 and "--wheelhouse needs a directory" in done.stderr


def test_the_check_stops_with_a_clear_message_without_a_gpu(tmp_path):
    # A PATH with the script's tools and no nvidia-smi: the machine without a GPU, wherever the test runs.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("dirname", "sed", "timeout"):
        (bin_dir / tool).symlink_to(shutil.which(tool))
    done = run([shutil.which("bash"), "bench/gpu_check.sh", "--skip-install"], env={**os.environ, "PATH": str(bin_dir)})
    assert done.returncode == 1
    assert "no NVIDIA GPU here" in done.stderr and "--provider cpu" in done.stderr


def test_the_whole_check_runs_with_the_cpu_in_the_gpus_place(tmp_path, model_repo, task_repo):
    # Every task the check covers: two classifiers, a numeric-sequence model and a language model.
    repo = tmp_path / "models"
    repo.mkdir()
    for package in (model_repo / "sentiment-lstm", model_repo / "topics-gru", task_repo / "waves-next",
                    task_repo / "lm"):
        (repo / package.name).symlink_to(package)
    texts = tmp_path / "texts.jsonl"
    reviews, _ = real_reviews(20)
    texts.write_text("".join(json.dumps({"text": t}) + "\n" for t in reviews))
    out = tmp_path / "check.json"
    done = run([sys.executable, "bench/gpu_check.py", "--provider", "cpu", "--models-dir", str(repo),
                "--texts", str(texts), "--n", "20", "--seconds", "0.2", "--out", str(out)])
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(out.read_text())
    rows = {r["model"]: r for r in result["rows"]}
    assert set(rows) == {"sentiment-lstm", "topics-gru", "waves-next", "lm"}
    assert all(r["same"] and r["provider"] == "CPUExecutionProvider" for r in rows.values())
    assert rows["sentiment-lstm"]["checked"] == 20 and rows["waves-next"]["checked"] == 256
    assert rows["topics-gru"]["gpu_b64"] > 0 and rows["lm"]["checked"] == 5
    assert "| sentiment-lstm | text-classification | ok (20, 0, 0.0e+00) |" in done.stdout
    assert (tmp_path / "gpu_check.checked.log").is_file()
