"""`rnnserve-train profile`: a package without a drift profile gets one from a file of texts, sealed, and the
server then scores its traffic against it; the bins written are the server's."""

import json
import shutil

import numpy as np

from rnnserve.service.core import profile
from rnnserve.service.core.package import read_package
from rnnserve.training.cli import main
from tests.conftest import in_process, real_reviews, wait_ready, wait_until


def test_profile_command_adds_a_sealed_profile_the_server_scores_against(tmp_path, model_repo):
    models = tmp_path / "models"
    shutil.copytree(model_repo / "sentiment-lstm", models / "sentiment-lstm")
    package = models / "sentiment-lstm" / "1"
    assert profile.PROFILE not in read_package(package).manifest.files
    texts, _ = real_reviews(300)
    source = tmp_path / "texts.jsonl"
    source.write_text("".join(json.dumps({"review": t}) + "\n" for t in texts))

    assert main(["profile", str(package), "--texts", str(source), "--text-column", "review", "--limit", "200"]) == 0
    sealed = read_package(package)  # the manifest lists it: the package is whole
    assert profile.PROFILE in sealed.manifest.files
    written = profile.Profile.parse(sealed.read(profile.PROFILE), sealed.labels)
    assert written.texts == 200 and "texts.jsonl" in written.source
    assert all(int(c.sum()) == 200 for s, c in written.counts.items() if s != "oov_share")
    first = (package / profile.PROFILE).read_bytes()
    assert main(["profile", str(package), "--texts", str(source), "--text-column", "review", "--limit", "200"]) == 0
    assert (package / profile.PROFILE).read_bytes() == first  # the same sample, the same profile

    with in_process(models, drift_min_count=20) as client:
        wait_ready(client)
        assert client.post("/v1/models/sentiment-lstm/predict", json={"texts": texts[:40]}).status_code == 200
        wait_until(lambda: client.get("/v1/models/sentiment-lstm/drift").json()["window"]["texts"] == 40)
        report = client.get("/v1/models/sentiment-lstm/drift").json()
        assert report["available"] and report["reference"]["texts"] == 200
        assert report["signals"]["label"]["reference"] == written.counts["label"].tolist()
        assert all(isinstance(entry["score"], float) for entry in report["signals"].values())


def test_psi_is_zero_for_the_same_shares_and_grows_with_the_shift():
    reference = np.array([50, 30, 20, 0])
    assert profile.psi(reference, reference * 3) == 0
    assert 0 < profile.psi(reference, np.array([40, 35, 25, 0])) < profile.psi(reference, np.array([0, 0, 20, 80]))
