"""File scoring over HTTP and from the command line, on the real 25,000 raw IMDB reviews."""

import csv
import gzip
import io
import json
import re
import select
import socket
import subprocess
import sys
import time

import httpx
import pytest

from tests.conftest import DATA_DIR, ROOT, Server, wait_until

RAW = DATA_DIR / "raw" / "imdb_train.csv.gz"


@pytest.fixture(scope="module")
def imdb_csv(data_dir) -> bytes:
    return gzip.decompress(RAW.read_bytes())


@pytest.fixture(scope="module")
def predict_labels(server, imdb_csv) -> list[str]:
    texts = [r["review"] for r in csv.DictReader(io.StringIO(imdb_csv.decode("utf-8")))]
    labels = []
    with httpx.Client(base_url=server.url, timeout=60) as client:
        for i in range(0, len(texts), 256):
            r = client.post("/v1/models/sentiment-lstm/predict", json={"texts": texts[i:i + 256]})
            labels += [p["label"] for p in r.json()["predictions"]]
    return labels


def chunked(data: bytes, size: int = 1 << 16):
    for i in range(0, len(data), size):
        yield data[i:i + size]


def test_endpoint_scores_all_25000_reviews_in_order(server, imdb_csv, predict_labels):
    with httpx.Client(timeout=120) as client:
        r = client.post(f"{server.url}/v1/models/sentiment-lstm/score", params={"text_column": "review"},
                        content=chunked(imdb_csv), headers={"content-type": "text/csv"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/x-ndjson")
    lines = [json.loads(line) for line in r.text.splitlines()]
    rows, summary = lines[:-1], lines[-1]["summary"]
    assert len(rows) == 25000 and summary["rows"] == 25000 and summary["errors"] == 0
    assert [row["row"] for row in rows] == list(range(1, 25001))
    assert rows[0]["id"] == "train/neg/0_3.txt"
    assert [row["label"] for row in rows] == predict_labels


@pytest.mark.parametrize("remote", [False, True])
def test_cli_scores_all_25000_reviews(server, model_repo, predict_labels, tmp_path, remote):
    out = tmp_path / "scores.csv"
    where = ["--url", server.url, "--model", "sentiment-lstm"] if remote else \
            ["--package", str(model_repo / "sentiment-lstm" / "1")]
    r = subprocess.run([sys.executable, "-m", "rnnserve.service.scoring.cli", str(RAW), "--text-column", "review",
                        *where, "--output-format", "csv", "-o", str(out)], cwd=ROOT, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert "scored 25000 rows" in r.stderr
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 25000
    assert [row["label"] for row in rows] == predict_labels
    assert rows[-1]["row"] == "25000"


def test_malformed_rows_give_error_rows_and_the_rest_is_scored(server):
    body = ('{"id": "a", "text": "a wonderful film"}\n'
            "{not json}\n"
            '{"id": "c", "txt": "wrong field"}\n'
            '["not", "an", "object"]\n'
            '{"id": "e", "text": "' + "x" * 100_001 + '"}\n').encode() + b'{"text": "\xff\xfe"}\n' + \
           b'{"id": "g", "text": "dull and far too long"}\n'
    r = httpx.post(f"{server.url}/v1/models/sentiment-lstm/score", content=body,
                   headers={"content-type": "application/x-ndjson"}, params={"probabilities": "true"})
    lines = [json.loads(line) for line in r.text.splitlines()]
    rows = lines[:-1]
    assert [row["row"] for row in rows] == [1, 2, 3, 4, 5, 6, 7]
    assert [("error" in row) for row in rows] == [False, True, True, True, True, True, False]
    assert "invalid JSON" in rows[1]["error"] and "'text'" in rows[2]["error"]
    assert "limit is 100000" in rows[4]["error"] and rows[5]["error"] == "invalid UTF-8"
    assert rows[0]["id"] == "a" and rows[6]["id"] == "g" and set(rows[6]["probabilities"]) == {"negative", "positive"}
    assert lines[-1]["summary"] | {"seconds": 0} == {"rows": 7, "scored": 2, "errors": 5, "seconds": 0}


def test_csv_quirks_and_csv_output(server):
    body = b'id,text\n1,"a film, with commas\nand a line break"\n2\n3,plain\n'
    r = httpx.post(f"{server.url}/v1/models/sentiment-lstm/versions/1/score", content=body,
                   headers={"content-type": "text/csv", "accept": "text/csv"})
    assert r.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(r.text.split("# summary")[0])))
    assert [row["id"] for row in rows] == ["1", "2", "3"]
    assert rows[0]["label"] and "fields" in rows[1]["error"] and rows[2]["label"]
    assert "# summary rows=3 scored=2 errors=1" in r.text


def test_plain_text_multipart_upload(server):
    r = httpx.post(f"{server.url}/v1/models/sentiment-lstm/score",
                   files={"file": ("reviews.txt", b"great fun\n\nterrible\n", "text/plain")})
    lines = [json.loads(line) for line in r.text.splitlines()]
    assert [row.get("label") is not None for row in lines[:-1]] == [True, True, True]  # the blank line is a text


def test_bad_requests(server):
    r = httpx.post(f"{server.url}/v1/models/sentiment-lstm/score", content=b"x", headers={"content-type": "image/png"})
    assert r.status_code == 422 and "format" in r.json()["error"]["message"]
    r = httpx.post(f"{server.url}/v1/models/nope/score", content=b"x", headers={"content-type": "text/plain"})
    assert r.status_code == 404
    r = httpx.post(f"{server.url}/v1/models/sentiment-lstm/score", params={"output": "xml"}, content=b"x")
    assert r.status_code == 422


def rows_inferred(server) -> float:
    text = httpx.get(f"{server.url}/metrics").text
    return float(re.search(r'rnnserve_batch_size_sum\{model="sentiment-lstm"\} (\S+)', text).group(1))


def test_disconnect_stops_the_work(model_repo):
    """Upload without end while reading the answer (full duplex, chunked), hang up, and the server stops."""
    server = Server(model_repo)
    server.wait_ready()
    line = b'{"text": "' + b"a long and winding review " * 40 + b'"}\n'
    chunk = b"%x\r\n%s\r\n" % (len(line * 50), line * 50)
    sock = socket.create_connection(("127.0.0.1", server.port))
    sock.sendall(b"POST /v1/models/sentiment-lstm/score HTTP/1.1\r\nHost: test\r\n"
                 b"Content-Type: application/x-ndjson\r\nTransfer-Encoding: chunked\r\n\r\n")
    sock.setblocking(False)
    received = b""
    deadline = time.monotonic() + 60  # bounded whatever the server does
    while received.count(b'"row"') < 2000 and time.monotonic() < deadline:
        try:
            sock.send(chunk)
        except BlockingIOError:
            pass
        readable, _, _ = select.select([sock], [], [], 0.01)
        if readable:
            received += sock.recv(1 << 16)
    sock.close()
    assert received.startswith(b"HTTP/1.1 200") and received.count(b'"row"') >= 2000
    wait_until(lambda: 'endpoint="/v1/models/{name}/score"' in httpx.get(f"{server.url}/metrics").text, 30,
               "the server to end the score request")
    after_close = rows_inferred(server)
    time.sleep(1.5)
    assert rows_inferred(server) == after_close, "the server kept scoring after the client left"
    assert "client disconnected; scoring stopped" in server.stop()


def test_client_that_sends_everything_before_reading_does_not_deadlock(server):
    """httpx sends the whole body before it reads the answer; the server must keep reading regardless."""
    rows = 150_000
    body = b"".join(b'{"id": %d, "text": "a fine film, well acted and well told"}\n' % i for i in range(rows))
    with httpx.Client(timeout=httpx.Timeout(60)) as client:
        r = client.post(f"{server.url}/v1/models/sentiment-lstm/score", content=chunked(body, 1 << 20),
                        headers={"content-type": "application/x-ndjson"}, params={"probabilities": "true"})
    lines = r.text.splitlines()
    assert len(lines) == rows + 1 and json.loads(lines[-1])["summary"]["errors"] == 0
