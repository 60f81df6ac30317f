"""Ray Data scoring and Ray Serve on a real local Ray cluster (127.0.0.1, 2 CPUs, a 150 MB object store),
started here and stopped at the end of the module. The CLI and `serve run` run as their own processes,
joining this cluster as a user's would."""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from bench.common import wait_http
from tests.conftest import DATA_DIR, ROOT, free_port, in_process, wait_ready

ray = pytest.importorskip("ray", reason="Ray is the [ray] extra: pip install -e '.[ray]'")
RAW = DATA_DIR / "raw" / "imdb_train.csv.gz"
BAD_ROWS = [b'short,row\n', b'"id-x","' + b"y" * 100_001 + b'",extra-field-is-fine?\n', b'bad\xff,utf8\n',
            b'unclosed,"never closes\n']


@pytest.fixture(scope="module")
def cluster():
    try:
        context = ray.init(num_cpus=2, object_store_memory=150 * 1024 * 1024, include_dashboard=False,
                           log_to_driver=False, _node_ip_address="127.0.0.1")
    except Exception as exc:  # noqa: BLE001 - the reason is the skip message
        pytest.skip(f"a local Ray cluster cannot start here: {exc}")
    try:
        yield context.address_info["gcs_address"]
    finally:
        ray.shutdown()


def run_cli(*args: str) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, "-m", "rnnserve.service.scoring.cli", *args], cwd=ROOT, capture_output=True,
                       text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def test_ray_data_scores_the_raw_reviews_exactly_as_the_local_scorer(cluster, data_dir, model_repo, tmp_path):
    """All 25,000 raw IMDB training reviews and four bad rows, gzipped: two actors on Ray Data give the local
    scorer's rows: the same row numbers, ids, labels and scores, and the same error rows."""
    source = tmp_path / "reviews.csv.gz"
    source.write_bytes(gzip.compress(gzip.decompress(RAW.read_bytes()) + b"".join(BAD_ROWS)))
    package = str(model_repo / "sentiment-lstm" / "1")
    run_cli(str(source), "--package", package, "--text-column", "review", "-o", str(tmp_path / "local.jsonl"))
    r = run_cli(str(source), "--package", package, "--text-column", "review", "--engine", "ray",
                "--address", cluster, "--actors", "2", "--output-format", "parquet", "-o", str(tmp_path / "ray"))
    assert "scored 25004 rows (4 errors)" in r.stderr

    local = [json.loads(line) for line in (tmp_path / "local.jsonl").read_text().splitlines()]
    scored = pq.read_table(tmp_path / "ray").sort_by("row").to_pylist()
    assert len(scored) == len(local) == 25_004
    assert [s["row"] for s in scored] == [row["row"] for row in local] == list(range(1, 25_005))
    assert [s["id"] for s in scored] == [row["id"] for row in local]  # text, or null where a row has none
    assert [s["label"] for s in scored] == [row.get("label") for row in local]
    assert [s["error"] for s in scored] == [row.get("error") for row in local]
    assert sum(s["error"] is not None for s in scored) == 4
    ok = [i for i, row in enumerate(local) if "score" in row]
    assert np.allclose([scored[i]["score"] for i in ok], [local[i]["score"] for i in ok], atol=1e-6)


def test_ray_data_reads_json_lines_and_parquet_and_keeps_every_row(cluster, model_repo, tmp_path):
    from rnnserve.service.engines.ray_data import score_files
    from rnnserve.service.scoring.pipeline import ScoreOptions

    lines = [{"id": "a", "text": "a wonderful film"}, {"id": "b", "text": 7}, {"id": "c"},
             {"id": "d", "text": "dull and far too long"}]
    jsonl = tmp_path / "in" / "part-1.jsonl"
    jsonl.parent.mkdir()
    jsonl.write_text("\n".join(json.dumps(x) for x in lines) + "\nnot json\n")
    pq.write_table(pa.table({"id": ["p1", "p2", "p3"], "text": ["great acting", None, "boring"]}),
                   tmp_path / "in" / "part-2.parquet")
    out = tmp_path / "out"
    summary = score_files(str(tmp_path / "in"), str(model_repo / "topics-gru" / "1"), str(out),
                          ScoreOptions(output_format="jsonl", probabilities=True))
    assert summary == {"rows": 8, "scored": 4, "errors": 4}
    rows = [json.loads(line) for f in sorted(out.iterdir()) for line in f.read_text().splitlines()]
    rows.sort(key=lambda r: (r["file"], r["row"]))
    assert [(Path(r["file"]).name, r["row"], r["id"]) for r in rows] == [
        ("part-1.jsonl", 1, "a"), ("part-1.jsonl", 2, "b"), ("part-1.jsonl", 3, "c"), ("part-1.jsonl", 4, "d"),
        ("part-1.jsonl", 5, None), ("part-2.parquet", 1, "p1"), ("part-2.parquet", 2, "p2"),
        ("part-2.parquet", 3, "p3")]
    assert [r["error"] is None for r in rows] == [True, False, False, True, False, True, False, True]
    with in_process(model_repo) as client:
        wait_ready(client)
        texts = ["a wonderful film", "dull and far too long", "great acting", "boring"]
        expected = client.post("/v1/models/topics-gru/predict",
                               json={"texts": texts, "return_probabilities": True}).json()["predictions"]
    got = [r for r in rows if r["error"] is None]
    assert [r["label"] for r in got] == [p["label"] for p in expected]
    for r, p in zip(got, expected):
        assert [r[f"p_{k}"] for k in p["probabilities"]] == pytest.approx(list(p["probabilities"].values()), abs=1e-6)


@pytest.fixture
def serve_app(cluster, model_repo, tmp_path):
    """`serve run deploy/ray/serve.yaml`, as documented, joined to the test cluster; its port made free and
    its model repository the test's."""
    config = yaml.safe_load((ROOT / "deploy" / "ray" / "serve.yaml").read_text())
    port = free_port()
    config["http_options"]["port"] = port
    config["applications"][0]["runtime_env"]["env_vars"]["RNNSERVE_MODELS_DIR"] = str(model_repo)
    path = tmp_path / "serve.yaml"
    path.write_text(yaml.safe_dump(config))
    proc = subprocess.Popen([str(Path(sys.executable).parent / "serve"), "run", str(path), "--address", cluster],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    url = f"http://127.0.0.1:{port}"
    try:
        try:
            wait_http(url + "/v2/health/ready", proc, 180)
        except RuntimeError as exc:
            raise AssertionError(f"{exc}: {proc.stdout.read()[-3000:]}") from None
        yield url
    finally:
        proc.send_signal(signal.SIGINT)  # serve run shuts the application down on Ctrl-C
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
        from ray import serve
        serve.shutdown()


def test_ray_serve_answers_like_the_plain_service(serve_app, api):
    import tritonclient.http as triton

    texts = ["a wonderful, moving film", "dull and far too long", "", "Café crème, naïve plot"]
    body = {"texts": texts, "top_k": 2, "return_probabilities": True}
    via_serve = httpx.post(serve_app + "/v1/models/topics-gru/predict", json=body, timeout=30)
    assert via_serve.status_code == 200, via_serve.text
    plain = api.post("/v1/models/topics-gru/predict", json=body).json()
    for got, want in zip(via_serve.json()["predictions"], plain["predictions"]):
        assert got["label"] == want["label"] and got["tokens"] == want["tokens"]
        assert got["probabilities"] == pytest.approx(want["probabilities"], abs=1e-6)

    client = triton.InferenceServerClient(serve_app.removeprefix("http://"))
    assert client.is_server_ready() and client.is_model_ready("sentiment-lstm")
    text = triton.InferInput("text", [len(texts)], "BYTES")
    text.set_data_from_numpy(np.array([t.encode() for t in texts], dtype=object))
    result = client.infer("sentiment-lstm", [text])
    plain = api.post("/v1/models/sentiment-lstm/predict", json=body).json()["predictions"]
    assert [x.decode() for x in result.as_numpy("label").ravel()] == [p["label"] for p in plain]  # [N, 1]
    labels = api.get("/v1/models/sentiment-lstm").json()["labels"]
    assert np.allclose(result.as_numpy("probabilities"),
                       [[p["probabilities"][k] for k in labels] for p in plain], atol=1e-6)

    # The service's own errors come through Serve unchanged.
    r = httpx.post(serve_app + "/v1/models/nope/predict", json={"text": "x"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
