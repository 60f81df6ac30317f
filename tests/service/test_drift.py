"""Drift (service/drift.py): the bundled classifiers' own held-out texts stay under the alert threshold and
another domain's rise over it; a package without a profile serves and says drift is unavailable; two workers
report the same, whole-server scores."""

import json
import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest

from rnnserve.service.core.package import MANIFEST, seal
from rnnserve.service.core.profile import ALERT, PROFILE, SIGNALS
from rnnserve.service.drift import Drift
from rnnserve.service.metrics import Metrics
from rnnserve.service.registry import Registry
from rnnserve.service.settings import BUNDLED_MODELS, Settings
from rnnserve.training.data import _read_npz, imdb_raw_train_in_keras_order, reuters_raw_train
from tests.conftest import Server, in_process, wait_ready, wait_until
from tests.service.storage import full_directory

IMDB, REUTERS = "imdb-lstm", "reuters-lstm"
WINDOW = 300


def held_out(data_dir: Path, dataset: str, n: int) -> list[str]:
    """n texts of a Keras dataset's test split (never trained on), from its stored word ranks: the raw test texts
    are held back (shared/data/SOURCES.md), so each is its words joined by spaces, which the package's tokenizer
    splits back into the same words."""
    index = json.loads((data_dir / f"{dataset}_word_index.json").read_text())
    words = {rank: word for word, rank in index.items()}
    if dataset == "imdb":
        rows = _read_npz(data_dir / "imdb_reconstructed.npz")["x_test"]
    else:  # keras.datasets.reuters.load_data's split: shuffled with seed 113, the last 20%
        rows = _read_npz(data_dir / "reuters.npz")["x"]
        order = np.arange(len(rows))
        np.random.RandomState(113).shuffle(order)
        rows = rows[order][int(len(rows) * 0.8):]
    chosen = np.random.default_rng(1).choice(len(rows), n, replace=False)
    return [" ".join(words[i] for i in rows[k] if i in words) for k in chosen]


def repo_of(tmp_path: Path, *names: str) -> Path:
    for name in names:
        shutil.copytree(BUNDLED_MODELS / name, tmp_path / "models" / name)
    return tmp_path / "models"


def send(post, name: str, texts: list[str], batch: int = 25) -> None:
    for i in range(0, len(texts), batch):
        response = post(f"/v1/models/{name}/predict", json={"texts": texts[i:i + batch]})
        assert response.status_code == 200, response.text


def settled(get, name: str, texts: int, before: float | None = None) -> dict:
    """The drift report once its window holds `texts` texts, computed after `before` (an earlier report's time)."""
    found: dict = {}

    def ready() -> bool:
        found.update(get(f"/v1/models/{name}/drift").json())
        return found["window"]["texts"] == texts and (before is None or found["updated_at"] > before)

    wait_until(ready, 30, f"{name}'s drift window to hold {texts} texts")
    return found


def scores(report: dict) -> dict[str, float]:
    return {signal: entry["score"] for signal, entry in report["signals"].items()}


@pytest.mark.parametrize(("name", "own", "other"), [(IMDB, "imdb", "reuters"), (REUTERS, "reuters", "imdb")])
def test_own_held_out_texts_stay_under_the_threshold_and_another_domain_rises_over_it(tmp_path, data_dir, name,
                                                                                         own, other):
    foreign = (reuters_raw_train if other == "reuters" else imdb_raw_train_in_keras_order)(data_dir)[0]
    with in_process(repo_of(tmp_path, name), drift_window=WINDOW, drift_min_count=100) as client:
        wait_ready(client)
        first = client.get(f"/v1/models/{name}/drift").json()
        assert first["available"] and first["window"]["texts"] == 0 and scores(first) == dict.fromkeys(SIGNALS)
        send(client.post, name, held_out(data_dir, own, WINDOW))
        report = settled(client.get, name, WINDOW)
        assert report["threshold"] == ALERT and report["alerts"] == [], scores(report)
        assert all(score is not None and score < ALERT for score in scores(report).values()), scores(report)
        assert sum(report["signals"]["label"]["live"]) == WINDOW
        send(client.post, name, list(foreign[:WINDOW]))  # the whole window replaced by another domain's texts
        report = settled(client.get, name, WINDOW, report["updated_at"])
        assert "oov_share" in report["alerts"] and max(scores(report).values()) >= ALERT, scores(report)
        metrics = client.get("/metrics").text
        assert f'rnnserve_drift_score{{model="{name}",signal="oov_share",version="1"}}' in metrics


def test_numeric_noise_rises_over_the_threshold(tmp_path):
    noise = [" ".join(str(i * 7919 % 100003) for i in range(k, k + 40)) for k in range(WINDOW)]
    with in_process(repo_of(tmp_path, IMDB), drift_window=WINDOW, drift_min_count=100) as client:
        wait_ready(client)
        send(client.post, IMDB, noise)
        report = settled(client.get, IMDB, WINDOW)
        assert {"tokens", "oov_share"} <= set(report["alerts"]), scores(report)


def test_a_package_without_a_profile_serves_and_says_drift_is_unavailable(tmp_path, model_repo):
    package = tmp_path / "models" / "sentiment-lstm" / "1"
    shutil.copytree(model_repo / "sentiment-lstm", package.parent)
    if (package / PROFILE).exists():  # fixtures rebuilt since drift have one: this test is about those without
        (package / PROFILE).unlink()
        (package / MANIFEST).unlink()
        seal(package)
    with in_process(tmp_path / "models") as api:
        wait_ready(api)
        assert api.post("/v1/models/sentiment-lstm/predict", json={"texts": ["a fine film"]}).status_code == 200
        for path in ("/v1/models/sentiment-lstm/drift", "/v1/models/sentiment-lstm/versions/1/drift"):
            report = api.get(path).json()
            assert report["available"] is False and "profile.json" in report["reason"], report
        assert api.get("/v1/models/no-such-model/drift").status_code == 404
        assert 'rnnserve_drift_score{model="sentiment-lstm"' not in api.get("/metrics").text


def test_drift_off_says_so(tmp_path):
    with in_process(repo_of(tmp_path, IMDB), drift=False) as client:
        wait_ready(client)
        report = client.get(f"/v1/models/{IMDB}/drift").json()
        assert report["available"] is False and "off" in report["reason"]


def test_two_workers_report_the_same_whole_server_scores(tmp_path, data_dir):
    texts = held_out(data_dir, "imdb", 120)
    srv = Server(repo_of(tmp_path, IMDB), "--workers", "2",
                 env={"RNNSERVE_DRIFT_WINDOW": "1000", "RNNSERVE_DRIFT_MIN_COUNT": "50"})
    try:
        srv.wait_ready(timeout=120)  # both workers
        pids = srv.worker_pids()
        for i in range(0, len(texts), 4):  # a connection per request: the kernel spreads them over the workers
            assert httpx.post(f"{srv.url}/v1/models/{IMDB}/predict", json={"texts": texts[i:i + 4]}).status_code == 200

        def drift_files() -> list[Path]:  # written at each background round (every second)
            return list(Path("/tmp").glob(f"rnnserve-*/drift/{pids[0]}.json"))

        wait_until(drift_files, 10, "the workers to share their windows in the state directory")
        folder = drift_files()[0].parent

        def recorded(pid: int) -> int:
            path = folder / f"{pid}.json"
            return sum(sum(c["shape"]) for _, _, c in json.loads(path.read_text())) if path.exists() else 0

        wait_until(lambda: sum(map(recorded, pids)) == len(texts), 30, "both workers' windows to be shared")
        assert all(recorded(pid) > 0 for pid in pids), "the requests reached both workers"
        seen = []

        def all_agree() -> bool:  # each GET on a new connection: either worker answers
            seen[:] = [httpx.get(f"{srv.url}/v1/models/{IMDB}/drift").json() for _ in range(12)]
            return all(r["window"]["texts"] == len(texts) for r in seen)

        wait_until(all_agree, 30, "every worker to report the whole server's window")
        assert len({json.dumps(r["signals"], sort_keys=True) for r in seen}) == 1
        assert all(s is not None and s < ALERT for s in scores(seen[0]).values()), scores(seen[0])
    finally:
        srv.stop()


def test_a_full_state_directory_leaves_no_half_written_histograms(tmp_path):
    """The workers share their histograms through the state directory: when it cannot be written, the round
    fails whole and leaves no temporary file behind (a worker's next round tries again)."""
    settings = Settings(models_dir=tmp_path / "models")
    metrics = Metrics()
    with full_directory(tmp_path / "state") as state:
        drift = Drift(settings, metrics, Registry(settings, metrics), state.path / "drift")
        drift.refresh({("m", "1"): {"tokens": [1, 2]}}, [])
        assert [p.name for p in state.path.rglob("*.json")]
        state.fill()
        with pytest.raises(OSError):
            drift.refresh({("m", "1"): {"tokens": [1, 2, 3]}}, [])
        assert not list(state.path.rglob("*.tmp"))
