"""The built-in page and /docs in a real browser: Debian's Chromium driven by Playwright, against a real server.

Every request the browser makes is checked: one leaving 127.0.0.1 fails the test (the page and the docs must
work air-gapped), as does any console error or uncaught exception."""

from __future__ import annotations

import csv
import http.server
import json
import os
import shutil
import threading
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from rnnserve.service.settings import BUNDLED_MODELS
from tests.conftest import Server, in_process, real_reviews

playwright_api = pytest.importorskip("playwright.sync_api", reason="Playwright for Python is in the [dev] extra")
CHROMIUM = os.environ.get("RNNSERVE_CHROMIUM") or next(
    filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
# RNNSERVE_SCREENSHOTS=docs refreshes docs/page.png (README and site); by default it goes to a temporary folder.
SCREENSHOTS = os.environ.get("RNNSERVE_SCREENSHOTS")
REVIEW = ("One of the best films I have seen this year: a moving story, superb acting and a wonderful score. "
          "The middle drags a little and the ending is predictable, but I would gladly watch it again.")
# Characters outside the BMP: one code point each in the API's spans, two UTF-16 units each in JavaScript.
EMOJI_REVIEW = "😀😀 Great acting, but the plot was dull and boring. 𝐒𝐮𝐩𝐞𝐫𝐛 score 👍"
SMALL = "imdb-lstm-small"


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        pytest.skip("no Chromium: install Debian's chromium (apt-get install chromium) or set RNNSERVE_CHROMIUM")
    with playwright_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--headless=new"])
        yield browser
        browser.close()


# page.wait_for_function is given functions, not expressions: Playwright evaluates an expression again with
# eval() on every poll, which the page's and the docs' Content-Security-Policy (no 'unsafe-eval') refuses.


class Watched:
    """A page whose every request and console error is recorded; requests off the loopback are refused."""

    def __init__(self, browser, server: Server, allowed_errors: tuple[str, ...] = ()):
        self.context = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
        self.page = self.context.new_page()
        self.outside, self.errors = [], []
        self.allowed_errors = allowed_errors
        self.page.route("**/*", self._route)
        self.page.on("console", lambda m: m.type == "error" and self._error(m.text))
        self.page.on("pageerror", lambda e: self.errors.append(f"uncaught: {e}"))
        self.url = server.url

    def _route(self, route) -> None:
        host = urlsplit(route.request.url).hostname
        if route.request.url.startswith(("data:", "blob:")) or host == "127.0.0.1":
            route.continue_()
        else:
            self.outside.append(route.request.url)
            route.abort()

    def _error(self, text: str) -> None:
        if not any(a in text for a in self.allowed_errors):
            self.errors.append(text)

    def check_clean(self) -> None:
        assert self.outside == [], f"requests left the machine: {self.outside}"
        assert self.errors == [], f"console errors: {self.errors}"

    def close(self) -> None:
        self.context.close()


@pytest.fixture(scope="module")
def small_repo(tmp_path_factory) -> Path:
    """One small bundled classifier, copied, for tests that start their own server (or change its state)."""
    models = tmp_path_factory.mktemp("page") / "models"
    shutil.copytree(BUNDLED_MODELS / SMALL, models / SMALL)
    return models


@pytest.fixture
def watched(browser, bundled_server):
    w = Watched(browser, bundled_server)
    yield w
    w.close()


def test_the_page_lists_models_and_explains_a_prediction(watched, bundled_server, tmp_path):
    page = watched.page
    page.goto(bundled_server.url + "/")  # redirects to /ui/
    assert page.url == bundled_server.url + "/ui/"
    models = httpx.get(bundled_server.url + "/v1/models").json()["models"]
    page.wait_for_function(f"() => document.querySelectorAll('.card').length === {len(models)}")
    plots = sum(len(m["plots"]) for m in models)
    assert all("curves.png" in m["plots"] for m in models)  # classifiers have confusion.png too
    page.wait_for_function(f"() => [...document.images].filter(i => i.complete && i.naturalWidth > 0).length "
                           f"=== {plots}")
    card = page.locator(".card", has_text="imdb-lstm-small v1").first.inner_text()
    assert "87.9%" in card and "trained here" in card  # its test accuracy and where it came from

    page.select_option("#model-select", "imdb-lstm-small")
    page.fill("#text", REVIEW)
    page.click("#explain-form button")
    page.wait_for_selector("#highlighted .word")
    expected = httpx.post(bundled_server.url + "/v1/models/imdb-lstm-small/explain", json={"text": REVIEW}).json()
    assert page.inner_text("#verdict").startswith(expected["label"])
    assert page.locator("#bars .bar").count() == 2
    words = page.locator("#highlighted .word")
    assert words.count() == len(expected["words"])
    assert page.inner_text("#highlighted") == REVIEW  # the text itself, words and what lies between them
    shown = [float(v) for v in words.evaluate_all("ws => ws.map(w => w.dataset.contribution)")]
    assert shown == pytest.approx([w["contribution"] for w in expected["words"]], abs=1e-6)
    strongest = max(range(len(shown)), key=lambda i: abs(shown[i]))
    assert "rgba" in words.nth(strongest).evaluate("w => getComputedStyle(w).backgroundColor")
    page.locator("#classify").screenshot(path=Path(SCREENSHOTS or tmp_path) / "page.png")
    watched.check_clean()


def test_drift_is_plotted_beside_each_classifier(watched, bundled_server):
    page = watched.page
    page.goto(bundled_server.url + "/ui/")
    card = page.locator(".card", has_text="imdb-lstm-small v1").first
    card.locator(".drift figure").first.wait_for()
    report = httpx.get(bundled_server.url + "/v1/models/imdb-lstm-small/drift").json()
    figures = card.locator(".drift figure")
    assert figures.count() == len(report["signals"]) == 5
    assert [c.split(":")[0] for c in card.locator(".drift figcaption").all_inner_texts()] == list(report["signals"])
    bins = sum(len(entry["bins"]) for entry in report["signals"].values())
    assert card.locator(".drift svg rect.ref").count() == card.locator(".drift svg rect.live").count() == bins
    waves = page.locator(".card", has_text="waves-lstm-tutorial v1").first
    assert waves.locator(".drift").count() == 0  # drift is for text classifiers
    watched.check_clean()


def test_api_docs_render_offline(watched, bundled_server):
    page = watched.page
    page.goto(bundled_server.url + "/docs")
    page.wait_for_selector(".opblock")
    operations = sum(len(ops) for ops in httpx.get(bundled_server.url + "/openapi.json").json()["paths"].values())
    page.wait_for_function(f"() => document.querySelectorAll('.opblock').length === {operations}")
    assert page.locator(".opblock", has_text="/v1/models/{name}/explain").count() >= 1
    assert httpx.get(bundled_server.url + "/redoc").status_code == 404  # ReDoc would fetch its logo from a CDN
    watched.check_clean()


def test_a_file_scored_from_the_page(watched, bundled_server, tmp_path):
    texts, _ = real_reviews(10)
    path = tmp_path / "reviews.csv"
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "text"])
        writer.writerows((f"r{i}", t) for i, t in enumerate(texts))
    page = watched.page
    page.goto(bundled_server.url + "/ui/")
    page.wait_for_selector("#model-select option[value='imdb-gru-ensemble']", state="attached")
    page.select_option("#model-select", "imdb-gru-ensemble")
    page.set_input_files("#score-file", str(path))
    page.click("#score-form button")
    page.wait_for_selector("#score-download", state="visible")
    assert page.inner_text("#score-status").startswith(f"Done: {len(texts)} rows, {len(texts)} scored, 0 errors")
    with page.expect_download() as download:
        page.click("#score-download")
    lines = Path(download.value.path()).read_text(encoding="utf-8").splitlines()
    rows = [json.loads(line) for line in lines[:-1]]
    assert json.loads(lines[-1])["summary"]["rows"] == len(texts)
    predicted = httpx.post(bundled_server.url + "/v1/models/imdb-gru-ensemble/predict", json={"texts": texts})
    predicted = predicted.json()["predictions"]
    assert [r["id"] for r in rows] == [f"r{i}" for i in range(len(texts))]
    assert [r["label"] for r in rows] == [p["label"] for p in predicted]
    watched.check_clean()


def test_the_page_asks_for_an_api_key_when_keys_are_set(browser, model_repo):
    srv = Server(model_repo, env={"RNNSERVE_API_KEYS": "right-key"})
    try:
        srv.wait_ready()
        # The page's calls without (or with a wrong) key are answered 401, which the browser logs.
        w = Watched(browser, srv, allowed_errors=("401",))
        page = w.page
        page.goto(srv.url + "/ui/")
        page.wait_for_selector("#key-prompt", state="visible")
        assert page.locator(".card").count() == 0
        page.fill("#key-input", "wrong-key")
        page.click("#key-form button")
        page.wait_for_selector("#key-error:has-text('refused')")
        page.fill("#key-input", "right-key")
        page.click("#key-form button")
        page.wait_for_function("() => document.querySelectorAll('.card').length === 2")
        assert page.locator("#key-prompt").is_hidden()
        assert page.evaluate("sessionStorage.getItem('rnnserve-api-key')") == "right-key"
        assert page.evaluate("localStorage.length") == 0  # kept for the tab's session only
        page.fill("#text", REVIEW)
        page.click("#explain-form button")
        page.wait_for_selector("#highlighted .word")
        w.check_clean()
        w.close()
    finally:
        srv.stop()


def test_the_page_can_be_switched_off(model_repo):
    with in_process(model_repo, ui=False) as client:
        assert client.get("/ui/").status_code == 404 and client.get("/").status_code == 404
        assert client.get("/docs").status_code == 200


def test_each_task_gets_its_form(browser, task_repo, tmp_path):
    """Numeric sequences get a sequence form whose answers equal the API's; a language model gets a generate
    form that streams the text the API gives for the same seed; a text classifier keeps its own forms."""
    srv = Server(task_repo)
    try:
        srv.wait_ready()
        w = Watched(browser, srv)
        page = w.page
        page.goto(srv.url + "/ui/")
        page.wait_for_function("() => document.querySelectorAll('.card').length === 5")
        assert "test MSE" in page.locator(".card", has_text="waves-next v1").inner_text()
        assert "bits per char" in page.locator(".card", has_text="lm v1").inner_text()

        page.select_option("#model-select", "waves-kind")
        assert page.locator("#sequences").is_visible() and page.locator("#classify").is_hidden()
        assert page.locator("#generate").is_hidden() and page.locator("#score").is_hidden()
        rows = [[round(0.9 * ((t % 4) - 1.5), 2) for t in range(10)], [0.1 * t for t in range(10)]]
        page.fill("#sequence-input", "\n".join(", ".join(map(str, r)) for r in rows))
        page.click("#sequence-form button")
        page.wait_for_selector("#sequence-result tbody tr")
        api = httpx.post(srv.url + "/v1/models/waves-kind/predict", json={"sequences": rows}).json()
        shown = page.locator("#sequence-result tbody tr td:nth-child(2)").all_inner_texts()
        assert [s.split(" (")[0] for s in shown] == [p["label"] for p in api["predictions"]]

        page.select_option("#model-select", "waves-steps")
        page.fill("#sequence-input", " ".join(map(str, rows[1])))
        page.click("#sequence-form button")
        # The table is emptied while the answer is on its way: wait for a cell, then for its ten values.
        page.wait_for_function("() => document.querySelector('#sequence-result tbody td:nth-child(2)')"
                               "?.textContent.split(', ').length === 10")

        page.select_option("#model-select", "lm")
        assert page.locator("#generate").is_visible() and page.locator("#sequences").is_hidden()
        page.fill("#prompt", "The company said ")
        page.fill("#max-chars", "150")
        page.fill("#seed", "5")
        page.click("#generate-form button")
        page.wait_for_selector("#generated[data-done]", state="attached")
        api = httpx.post(srv.url + "/v1/models/lm/generate", json={"prompt": "The company said ", "max_chars": 150,
                                                                    "temperature": 0.7, "top_k": 0, "seed": 5})
        assert page.inner_text("#generated-text") == api.json()["text"]
        page.locator("#generate").screenshot(path=Path(SCREENSHOTS or tmp_path) / "generate.png")

        page.select_option("#model-select", "chars")
        assert page.locator("#classify").is_visible() and page.locator("#score").is_visible()
        assert page.locator("#generate").is_hidden()
        w.check_clean()
        w.close()
    finally:
        srv.stop()


def test_explanations_shade_the_right_words_past_the_bmp(watched, bundled_server):
    """The API's spans count code points; the page must not slice them as UTF-16 units (emoji are two)."""
    page = watched.page
    page.goto(bundled_server.url + "/ui/")
    page.wait_for_selector(f"#model-select option[value='{SMALL}']", state="attached")
    page.select_option("#model-select", SMALL)
    page.fill("#text", EMOJI_REVIEW)
    page.click("#explain-form button")
    page.wait_for_selector("#highlighted .word")
    expected = httpx.post(f"{bundled_server.url}/v1/models/{SMALL}/explain", json={"text": EMOJI_REVIEW}).json()
    words = page.locator("#highlighted .word")
    assert words.all_inner_texts() == [w["text"] for w in expected["words"]]
    shown = [float(v) for v in words.evaluate_all("ws => ws.map(w => w.dataset.contribution)")]
    assert shown == pytest.approx([w["contribution"] for w in expected["words"]], abs=1e-6)
    assert page.inner_text("#highlighted") == EMOJI_REVIEW
    watched.check_clean()


class Elsewhere(http.server.BaseHTTPRequestHandler):
    """Another origin on this machine (another loopback port): a page that could be any web site."""

    def do_GET(self):  # noqa: N802 - http.server's naming
        body = b"<!doctype html><title>another site</title><p>elsewhere</p>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def elsewhere():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Elsewhere)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def test_a_page_on_another_origin_cannot_act_on_the_service(browser, small_repo, elsewhere):
    """Requests a page may send without a CORS preflight (no-cors: no body, or text/plain) reach the server,
    which refuses them for their Origin: the model stays loaded. Nor can that page frame the service's page."""
    srv = Server(small_repo)
    try:
        srv.wait_ready()
        w = Watched(browser, srv, allowed_errors=("403", "frame"))  # Chromium logs the refusals
        page = w.page
        page.goto(elsewhere)
        simple = [(f"/v2/repository/models/{SMALL}/unload", {}),
                  (f"/v1/models/{SMALL}/predict", {"headers": {"Content-Type": "text/plain"},
                                                   "body": json.dumps({"text": "a great film"})}),
                  (f"/v1/models/{SMALL}/score", {"headers": {"Content-Type": "text/plain"}, "body": "great\n"})]
        for path, options in simple:
            with page.expect_response(srv.url + path) as response:
                page.evaluate("([url, options]) => fetch(url, {...options, method: 'POST', mode: 'no-cors'})",
                              [srv.url + path, options])
            assert response.value.status == 403, path
        assert httpx.get(f"{srv.url}/v2/models/{SMALL}/ready").status_code == 200
        assert httpx.post(f"{srv.url}/v2/repository/index").json()[0]["state"] == "READY"

        page.set_content(f'<iframe src="{srv.url}/ui/"></iframe>')
        frame = page.frames[1]
        frame.wait_for_load_state()
        assert frame.locator("#model-select").count() == 0  # refused by frame-ancestors: an error page
        w.close()
    finally:
        srv.stop()


def test_with_api_keys_the_docs_and_the_page_open_without_one(browser, small_repo):
    """A navigation carries no key: / still lands on the page (which asks for one), /docs renders every
    operation, and its Authorize button takes the key that its calls then carry."""
    srv = Server(small_repo, env={"RNNSERVE_API_KEYS": "right-key"})
    try:
        srv.wait_ready()
        w = Watched(browser, srv, allowed_errors=("401",))  # the page's first calls, before it has the key
        page = w.page
        page.goto(srv.url + "/")
        assert page.url == srv.url + "/ui/"
        page.wait_for_selector("#key-prompt", state="visible")

        page.goto(srv.url + "/docs")
        operations = sum(len(ops) for ops in httpx.get(srv.url + "/openapi.json").json()["paths"].values())
        page.wait_for_function(f"() => document.querySelectorAll('.opblock').length === {operations}")
        page.click("button.authorize")
        page.locator(".modal-ux input").first.fill("right-key")
        page.locator(".modal-ux button.authorize").first.click()
        page.locator(".modal-ux button.btn-done").first.click()
        models = page.locator(".opblock-get", has=page.locator("[data-path='/v1/models']"))
        models.locator(".opblock-summary").click()
        models.locator("button.try-out__btn").click()
        models.locator("button.execute").click()
        status = models.locator(".live-responses-table tbody .response-col_status")
        status.wait_for()
        assert status.inner_text().strip() == "200"
        assert httpx.get(srv.url + "/v1/models").status_code == 401  # the data still needs the key
        w.check_clean()
        w.close()
    finally:
        srv.stop()


def test_the_page_shows_a_models_rollout_and_the_shadows_comparison(browser, model_repo, tmp_path):
    """Version 2 a copy of version 1, shadowing every prediction (the repository's rollout file): the page
    shows the labels, the shadow and the comparison (agreement 100%, its |Δp| histogram)."""
    name = "sentiment-lstm"
    shutil.copytree(model_repo / name / "1", tmp_path / "models" / name / "1")
    shutil.copytree(model_repo / name / "1", tmp_path / "models" / name / "2")
    (tmp_path / "models" / name / "rollout.json").write_text(json.dumps(
        {"labels": {"stable": 1, "candidate": 2}, "shadow": "candidate", "shadow_share": 1.0}))
    srv = Server(tmp_path / "models")
    try:
        srv.wait_ready()
        for _ in range(10):
            httpx.post(f"{srv.url}/v1/models/{name}/predict", json={"text": "a fine film"}).raise_for_status()
        watched = Watched(browser, srv)
        page = watched.page
        page.goto(srv.url + "/ui/")
        page.select_option("#model-select", name)
        page.wait_for_function("() => document.querySelector('#rollout-figures').innerText.includes('10 inputs')")
        assert "stable → v1, candidate → v2 (from file)" in page.inner_text("#rollout-plan")
        assert "shadow: candidate on 100.0%" in page.inner_text("#rollout-plan")
        figures = page.inner_text("#rollout-figures")
        assert "100.0%" in figures and "shed" in figures
        assert page.locator("#delta-bars .bar").count() == 11  # ten bounds and +Inf
        watched.check_clean()
        watched.close()
    finally:
        srv.stop()
