"""Defects found by trying the service as an attacker and a careless client would (issue 13): each test
failed on the code before its fix."""

import asyncio
import json
import re
import shutil
import signal
import socket
import time

import httpx
import pytest

from rnnserve.service.core.errors import ModelClosed
from rnnserve.service.core.package import PackageError, seal
from rnnserve.service.core.rows import RowReader
from rnnserve.service.metrics import Metrics
from rnnserve.service.registry import Registry
from rnnserve.service.runtime.base import RuntimeOptions
from rnnserve.service.runtime.text import TextClassifier
from rnnserve.service.scoring.pipeline import RowWriter, score_stream
from rnnserve.service.settings import Settings
from tests.conftest import Server, in_process, wait_ready, wait_until

NDJSON = {"content-type": "application/x-ndjson"}


@pytest.fixture()
def live_repo(model_repo, tmp_path):
    repo = tmp_path / "models"
    shutil.copytree(model_repo, repo)
    return repo


def ndjson_rows(n: int, on_row=None):
    """n JSON Lines rows in blocks of 250; on_row(i) is called before row i (to act mid-upload)."""
    block = []
    for i in range(n):
        if on_row:
            on_row(i)
        block.append(json.dumps({"id": i, "text": f"a fine film, number {i}"}).encode() + b"\n")
        if len(block) == 250:
            yield b"".join(block)
            block = []
    if block:
        yield b"".join(block)


def test_reload_and_unload_during_a_streaming_score_lose_no_row(live_repo):
    srv = Server(live_repo)
    try:
        srv.wait_ready()
        url = f"{srv.url}/v1/models/sentiment-lstm/score"
        for action in ("load", "unload"):
            def act(i, action=action):
                if i == 3000:
                    assert httpx.post(f"{srv.url}/v2/repository/models/sentiment-lstm/{action}",
                                      timeout=60).status_code == 200

            r = httpx.post(url, content=ndjson_rows(6000, act), headers=NDJSON, timeout=120)
            lines = r.text.splitlines()
            summary = json.loads(lines[-1])["summary"]
            rows = [json.loads(line) for line in lines[:-1]]
            assert summary["rows"] == len(rows) == 6000 and [row["row"] for row in rows] == list(range(1, 6001))
            if action == "load":  # the stream moves to the reloaded copy: nothing fails
                assert summary["errors"] == 0
            else:  # unloaded: the rest are error rows, and the stream still ends with its summary
                errors = [row["error"] for row in rows if "error" in row]
                assert summary["errors"] == len(errors) > 0 and all("not found" in e for e in errors)
    finally:
        srv.stop()


def test_hostile_json_lines_are_one_error_row_each(api):
    bad = [b'{"id": "\\ud800", "text": "x"}', b"[" * 5000, b"[" * 2000 + b"]" * 2000]
    good = [json.dumps({"id": i, "text": "fine"}).encode() for i in range(999)]
    body = b"\n".join([good[0], *bad, *good[1:]]) + b"\n"
    r = api.post("/v1/models/sentiment-lstm/score", content=body, headers=NDJSON)
    lines = r.text.splitlines()
    assert json.loads(lines[-1])["summary"] | {"seconds": 0} == {"rows": 1002, "scored": 999, "errors": 3,
                                                                 "seconds": 0}
    assert [json.loads(line).get("error", "")[:12] for line in lines[1:4]] == ["invalid JSON"] * 3


@pytest.mark.parametrize("query,name", [("format=xml", "format"), ("output=xml", "output"),
                                        ("probabilities=maybe", "probabilities")])
def test_bad_score_parameters_are_422_naming_them(api, query, name):
    r = api.post(f"/v1/models/sentiment-lstm/score?{query}", content=b"text\nfine\n",
                 headers={"content-type": "text/csv"})
    assert r.status_code == 422 and name in r.json()["error"]["message"]


@pytest.mark.parametrize("path,body", [
    ("/v1/models/sentiment-lstm/versions/1%0a/predict", {"text": "x"}),
    ("/v1/models/sentiment-lstm%0a/predict", {"text": "x"}),
])
def test_name_and_version_patterns_match_whole(api, path, body):
    assert api.post(path, json=body).status_code == 404


@pytest.mark.parametrize("top_k", ["2", True, 1.5])
def test_top_k_is_a_strict_integer(api, top_k):
    r = api.post("/v1/models/sentiment-lstm/predict", json={"text": "x", "top_k": top_k})
    assert r.status_code == 422 and "top_k" in r.json()["error"]["message"]


def test_integers_are_json_schema_integers(api):
    """2.0 is an integer to JSON Schema, as the OpenAPI document declares top_k; its bounds are JSON Schema's
    keywords (minimum, maximum), which schema-driven clients and fuzzers read."""
    r = api.post("/v1/models/sentiment-lstm/predict", json={"text": "x", "top_k": 2.0})
    assert r.status_code == 200 and len(r.json()["predictions"][0]["top_k"]) == 2
    assert not re.search(r'"(ge|le|gt|lt)":', api.get("/openapi.json").text)


def test_v2_booleans_must_be_booleans(api):
    body = {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["x"]}],
            "outputs": [{"name": "label", "parameters": {"binary_data": "no"}}]}
    r = api.post("/v2/models/sentiment-lstm/infer", json=body)
    assert r.status_code == 422 and "binary_data" in r.json()["error"]


def test_request_ids_are_capped_and_unknown_models_hide_the_repository_path(api, model_repo):
    r = api.get("/health/live", headers={"X-Request-ID": "x" * 129})
    assert r.headers["x-request-id"] != "x" * 129 and len(r.headers["x-request-id"]) <= 128
    assert api.get("/health/live", headers={"X-Request-ID": "mine-1"}).headers["x-request-id"] == "mine-1"
    r = api.post("/v2/repository/models/nothing-here/load")
    assert r.status_code == 404 and str(model_repo) not in r.text


def test_an_unexpected_error_is_a_json_500_with_the_request_id(model_repo):
    with in_process(model_repo) as client:
        wait_ready(client)

        async def broken():
            raise RuntimeError("a bug")

        client.app.add_api_route("/test-only/broken", broken)
        r = client.get("/test-only/broken", headers={"X-Request-ID": "trace-500"})
    assert r.status_code == 500 and r.headers["x-request-id"] == "trace-500"
    assert r.json()["error"]["code"] == "internal_error"


def test_concurrent_loads_of_one_model_close_every_superseded_copy(model_repo):
    async def main():
        registry = Registry(Settings(models_dir=model_repo, warmup=False), Metrics())
        await registry.load_all()
        stop, served = asyncio.Event(), {}

        async def traffic():  # every copy that serves is kept, to look at afterwards
            while not stop.is_set():
                model = registry.get("sentiment-lstm")
                served[id(model)] = model
                try:
                    await model.predict(["fine"])
                except ModelClosed:
                    pass
                await asyncio.sleep(0)

        runner = asyncio.create_task(traffic())
        await asyncio.gather(*(registry.load("sentiment-lstm") for _ in range(10)))
        deadline = asyncio.get_running_loop().time() + 10
        while id(registry.get("sentiment-lstm")) not in served:  # the traffic reaches the installed copy
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.001)
        stop.set()
        await runner
        installed = registry.get("sentiment-lstm")
        still_open = [m for m in served.values() if not m.batcher.closed]
        await registry.close()
        return still_open, installed, len(served)

    still_open, installed, served = asyncio.run(main())
    assert served >= 2 and still_open == [installed]


def test_a_model_whose_embedding_misses_tokenizer_ids_is_refused_at_load(model_repo, tmp_path):
    package = tmp_path / "mismatch" / "1"
    shutil.copytree(model_repo / "sentiment-lstm" / "1", package)
    spec = json.loads((package / "tokenizer.json").read_text())
    assert spec["num_words"] and len(spec["words"]) + spec["index_from"] > spec["num_words"]
    (package / "tokenizer.json").write_text(json.dumps(spec | {"num_words": None}))  # ids beyond the embedding
    seal(package)
    with pytest.raises(PackageError, match="does not take the tokenizer's ids"):
        TextClassifier.open(package, RuntimeOptions(warmup=False))


def score_rows(api, body: bytes, headers: dict | None = None) -> tuple[list[dict], dict]:
    headers = {"content-type": "text/csv"} | (headers or {})
    r = api.post("/v1/models/sentiment-lstm/score", content=body, headers=headers)
    assert r.status_code == 200, r.text
    *rows, last = [json.loads(line) for line in r.text.splitlines()]
    return rows, last.get("summary", last)


def test_a_stray_quote_drops_no_row(api):
    body = b"id,text\n1,a fine film\n2,he is 6\" tall\n" + b"".join(b"%d,row %d\n" % (i, i) for i in range(3, 1001))
    rows, summary = score_rows(api, body)
    assert summary["rows"] == len(rows) == 1000 and summary["errors"] == 0
    body = b"id,text\n1,\"never closed\n" + b"".join(b"%d,row %d\n" % (i, i) for i in range(2, 1001))
    rows, summary = score_rows(api, body)
    assert summary["rows"] == len(rows) == 1000 and summary["errors"] == 1
    assert "never closes" in rows[0]["error"] and rows[1]["id"] == "2" and rows[-1]["id"] == "1000"


def test_an_unclosed_quote_costs_linear_work(api):
    """20,000 rows after an unclosed quote: each line is re-read a bounded number of times, not 20,000."""
    body = b"id,text\n1,\"open\n" + b"".join(b"%d,row\n" % i for i in range(2, 20_002))
    rows, summary = score_rows(api, body)
    assert summary["rows"] == 20_001 and summary["errors"] == 1


def test_a_line_over_the_limit_is_an_error_row_and_reading_goes_on(api):
    long_line = b"2," + b"x" * 2_000_000  # past 100,000 characters x 4 bytes + 64 KiB
    body = b"id,text\n1,fine\n" + long_line + b"\n3,also fine\n"
    rows, summary = score_rows(api, body)
    assert [r.get("error", "")[:16] for r in rows] == ["", "line longer than", ""] and summary["rows"] == 3


def test_byte_order_marks_utf16_and_blank_lines(api):
    rows, _ = score_rows(api, "\ufefftext\nfine\nawful\n".encode("utf-8"))
    assert [r.get("error") for r in rows] == [None, None]
    rows, _ = score_rows(api, "id,text\n1,fine\n2,awful\n".encode("utf-16"))
    assert [(r["id"], r.get("error")) for r in rows] == [("1", None), ("2", None)]
    rows, summary = score_rows(api, b"text\nfine\n\n\nawful\n")  # one column: a blank line is an empty text
    assert summary["rows"] == 4 and summary["errors"] == 0


def test_gzip_uploads_are_decompressed_with_a_bound(api):
    import gzip

    plain = b"id,text\n" + b"".join(b"%d,a fine film\n" % i for i in range(1, 301))
    packed = gzip.compress(plain)
    rows, summary = score_rows(api, packed, headers={"content-encoding": "gzip"})
    assert summary["rows"] == 300 and summary["errors"] == 0
    r = api.post("/v1/models/sentiment-lstm/score", files={"file": ("reviews.csv.gz", packed, "application/gzip")})
    assert json.loads(r.text.splitlines()[-1])["summary"]["rows"] == 300
    r = api.post("/v1/models/sentiment-lstm/score", content=packed[:40] + b"\x00" * 40,
                 headers={"content-type": "text/csv"})
    assert "corrupt" in json.loads(r.text.splitlines()[-1])["error"]


def test_a_gzip_bomb_stops_at_the_upload_limit(model_repo):
    import gzip

    bomb = gzip.compress(b"text\n" + b"a" * 50_000_000)  # 50 MB from about 50 KB
    with in_process(model_repo, max_score_bytes=1_000_000) as client:
        wait_ready(client)
        r = client.post("/v1/models/sentiment-lstm/score", content=bomb, headers={"content-type": "text/csv"})
    assert "exceeds the limit of 1000000 bytes" in json.loads(r.text.splitlines()[-1])["error"]


def raw_request(port: int, payload: bytes, timeout: float = 10) -> bytes:
    """Send bytes on a fresh socket as far as the server takes them; return what it answered."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        try:
            for i in range(0, len(payload), 65536):
                sock.sendall(payload[i:i + 65536])
        except OSError:  # the server answered and closed while we were still sending
            pass
        chunks = []
        try:
            while data := sock.recv(65536):
                chunks.append(data)
        except OSError:
            pass
        return b"".join(chunks)


def test_connection_guards(model_repo):
    srv = Server(model_repo, "--header-timeout-s", "1", "--max-connections", "8")
    try:
        srv.wait_ready()
        big = b"GET /health/live HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 300_000 + b"\r\n\r\n"
        answer = raw_request(srv.port, big)
        assert answer.startswith(b"HTTP/1.1 431") and b"exceed 65536 bytes" in answer
        # silent connections: past the cap they are closed at once; the others when their head is late
        silent = [socket.create_connection(("127.0.0.1", srv.port), timeout=5) for _ in range(12)]
        started = time.monotonic()
        closed_at = []
        for sock in silent:
            assert sock.recv(1) == b""  # closed by the server (a refused one at once, the rest after 1 s)
            closed_at.append(time.monotonic() - started)
            sock.close()
        assert max(closed_at) < 4 and httpx.get(f"{srv.url}/health/live").status_code == 200
    finally:
        log = srv.stop()
    assert "connection cap reached" in log


def test_the_head_deadline_never_cuts_an_answer(model_repo):
    """The deadline is for a connection to send a head: a scoring stream read by a slow client (the upload is
    spooled, so the answer outlasts the deadline by the client's pause), and a keep-alive connection's next
    request, run well past it; a connection that then stays silent is closed at it."""
    srv = Server(model_repo, "--header-timeout-s", "0.3")
    try:
        srv.wait_ready()
        with httpx.Client(base_url=srv.url, timeout=60) as client:
            with client.stream("POST", "/v1/models/sentiment-lstm/score", headers=NDJSON,
                               content=ndjson_rows(100_000)) as r:
                lines = r.iter_lines()
                first = next(lines)
                time.sleep(1.0)  # a slow reader: megabytes of answer wait in the socket, the server's stream waits
                lines = [first, *lines]
            assert len(lines) == 100_001 and json.loads(lines[-1])["summary"]["rows"] == 100_000
            assert client.get("/health/live").status_code == 200  # the same connection, kept alive
        with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as sock:
            sock.sendall(b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n")
            answer = b"".join(iter(lambda: sock.recv(65536), b""))  # the answer, then closed at the deadline
            assert answer.startswith(b"HTTP/1.1 200")
    finally:
        srv.stop()


def test_sigterm_past_the_grace_period_ends_a_stream_with_a_reason(model_repo):
    srv = Server(model_repo, "--shutdown-grace-s", "1")
    try:
        srv.wait_ready()
        body = b"".join(ndjson_rows(100_000))
        with socket.create_connection(("127.0.0.1", srv.port), timeout=30) as sock:
            # The upload stops a tenth of the way and never ends, so the stream outlasts the grace period.
            sock.sendall(b"POST /v1/models/sentiment-lstm/score HTTP/1.1\r\nHost: x\r\n"
                         b"Content-Type: application/x-ndjson\r\nContent-Length: %d\r\n\r\n" % len(body)
                         + body[:len(body) // 10])
            first = sock.recv(65536)  # the stream has begun: the signal comes while it runs
            srv.proc.send_signal(signal.SIGTERM)
            answer = first + b"".join(iter(lambda: sock.recv(65536), b""))
        assert answer.startswith(b"HTTP/1.1 200") and b'{"error": "the server is shutting down' in answer
        assert srv.proc.wait(timeout=30) == 0
    finally:
        log = srv.stop()
    assert "the server is shutting down" in log and "client disconnected" not in log


def test_an_abandoned_multipart_upload_is_no_server_error(model_repo):
    srv = Server(model_repo)
    try:
        srv.wait_ready()
        part = (b"--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"r.csv\"\r\n"
                b"Content-Type: text/csv\r\n\r\ntext\n" + b"a fine film\n" * 1000)
        with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as sock:
            sock.sendall(b"POST /v1/models/sentiment-lstm/score HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000\r\n"
                         b"Content-Type: multipart/form-data; boundary=b\r\n\r\n" + part)
            time.sleep(0.3)
        counted = 'endpoint="/v1/models/{name}/score",model="sentiment-lstm",status="400"'
        wait_until(lambda: counted in httpx.get(f"{srv.url}/metrics").text, 10, "the 400 to be counted")
        assert 'status="500"' not in httpx.get(f"{srv.url}/metrics").text
    finally:
        log = srv.stop()
    assert "Traceback" not in log


def test_a_text_that_fails_alone_does_not_fail_its_block(model_repo, tmp_path):
    """A package that slipped past load validation (built here without it) fails on rare words only: in a
    scored file, only the rows with such words become error rows."""
    package = tmp_path / "mismatch" / "1"
    shutil.copytree(model_repo / "sentiment-lstm" / "1", package)
    spec = json.loads((package / "tokenizer.json").read_text())
    (package / "tokenizer.json").write_text(json.dumps(spec | {"num_words": None}))
    seal(package)
    rare = spec["words"][spec["num_words"] + 100]  # its id is past the embedding
    body = f"id,text\n1,a fine film\n2,{rare}\n3,a dull film\n".encode()

    async def main():
        from rnnserve.service.core.package import read_package
        from rnnserve.service.runtime.session import OrtSession

        clf = TextClassifier(read_package(package), OrtSession((package / "model.onnx").read_bytes(), "cpu", 1))

        async def chunks():
            yield body

        out = [text async for text in score_stream(chunks(), RowReader("csv"), RowWriter("jsonl", clf.labels),
                                                   clf.predict)]
        await clf.close()
        return [json.loads(line) for line in "".join(out).splitlines()]

    *rows, summary = asyncio.run(main())
    assert [("error" in r) for r in rows] == [False, True, False] and summary["summary"]["errors"] == 1


def test_large_bodies_in_one_chunk_with_their_head_are_not_mistaken_for_large_heads(model_repo):
    srv = Server(model_repo)
    try:
        srv.wait_ready()
        body = json.dumps({"texts": ["a fine film " * 1000] * 40}).encode()  # 480 KB, sent with its head
        head = (b"POST /v1/models/sentiment-lstm/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body))
        assert raw_request(srv.port, head + body).startswith(b"HTTP/1.1 200")
        # A head over the limit that arrives whole, in one read, is refused too (it used to pass up to 128 KB).
        for size in (66_000, 100_000):
            big = b"GET /health/live HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * size + b"\r\n\r\n"
            with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as sock:
                sock.sendall(big)
                answer = b"".join(iter(lambda: sock.recv(65536), b""))
            assert answer.startswith(b"HTTP/1.1 431") and b"x-content-type-options: nosniff" in answer, size
    finally:
        srv.stop()
