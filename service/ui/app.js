// The built-in page: plain browser JavaScript, no build step, no request beyond this service.
// API paths are relative ("../v1/..."), so the page works behind a path prefix too.
"use strict";

const KEY = "rnnserve-api-key"; // sessionStorage: gone when the tab closes
const $ = (id) => document.getElementById(id);

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

function authHeaders(extra = {}) {
  const key = sessionStorage.getItem(KEY);
  return key ? { ...extra, Authorization: `Bearer ${key}` } : extra;
}

async function errorOf(status, text) {
  let message = `${status}`;
  try { const body = JSON.parse(text); message = body.error?.message || body.error || message; } catch { /* not JSON */ }
  if (status === 401) askForKey(sessionStorage.getItem(KEY) ? "That key was refused." : "");
  return new ApiError(status, message);
}

async function api(path, options = {}) {
  const response = await fetch(path, { ...options, headers: authHeaders(options.headers) });
  if (!response.ok) throw await errorOf(response.status, await response.text());
  return response;
}

function askForKey(message) {
  $("key-prompt").hidden = false;
  $("key-error").textContent = message;
  $("key-input").focus();
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  Object.assign(node, attrs);
  node.append(...children);
  return node;
}

function percent(p) { return `${(100 * p).toFixed(1)}%`; }

// Models: one card each, with the package's plots fetched like any API call (the key travels in a header).
async function loadModels() {
  const { models } = await (await api("../v1/models")).json();
  const list = $("model-list"), select = $("model-select");
  list.replaceChildren();
  select.replaceChildren();
  for (const m of models) {
    if (m.state !== "ready") {
      const reasons = m.failed_versions.map((f) => `v${f.version}: ${f.reason}`).join("; ");
      list.append(el("div", { className: "card failed" }, el("h3", { textContent: m.name }),
                     el("p", { className: "error", textContent: `not loaded: ${reasons}` })));
      continue;
    }
    select.append(el("option", { value: m.name, textContent: `${m.name} (v${m.version})` }));
    const arch = m.architecture || {};
    const test = (m.metrics || {}).test || {};
    const facts = [
      ["task", m.task], ["labels", m.labels.length > 6 ? `${m.labels.length} classes` : m.labels.join(", ")],
      ["model", [arch.bidirectional ? "bidirectional" : "", arch.layers > 1 ? `${arch.layers} x` : "",
                 (arch.cell || "").toUpperCase(), arch.units ? `(${arch.units})` : ""].filter(Boolean).join(" ")],
      ["test accuracy", test.accuracy === undefined ? "n/a" : `${percent(test.accuracy)} of ${test.examples}`],
      ["max length", `${m.maxlen} tokens`], ["runs on", `${m.provider}, ${m.threads} threads`],
    ];
    const dl = el("dl");
    for (const [k, v] of facts) dl.append(el("dt", { textContent: k }), el("dd", { textContent: v }));
    const card = el("div", { className: "card" }, el("h3", { textContent: `${m.name} v${m.version}` }), dl);
    list.append(card);
    for (const plot of m.plots || []) {
      const img = el("img", { alt: `${m.name}: ${plot}` });
      card.append(img);
      api(`../v1/models/${encodeURIComponent(m.name)}/versions/${m.version}/files/${encodeURIComponent(plot)}`)
        .then((r) => r.blob()).then((b) => { img.src = URL.createObjectURL(b); })
        .catch((e) => img.replaceWith(el("p", { className: "error", textContent: `${plot}: ${e.message}` })));
    }
  }
  $("key-prompt").hidden = true;
}

// Explanation: the verdict, a bar per class, and the text with each word shaded by its contribution.
function renderExplanation(text, out) {
  const p = out.prediction;
  $("verdict").textContent = `${p.label}: ${percent(p.score)}`;
  $("explained-label").textContent = out.label;
  const bars = $("bars");
  bars.replaceChildren();
  for (const { label, probability } of p.top_k.slice(0, 10)) {
    const fill = el("div", { className: "fill" });
    fill.style.width = percent(probability);
    bars.append(el("div", { className: "bar" }, el("span", { textContent: label }),
                    el("div", { className: "track" }, fill), el("span", { className: "value", textContent: percent(probability) })));
  }
  const scale = Math.max(1e-9, ...out.words.map((w) => Math.abs(w.contribution)));
  const box = $("highlighted");
  box.replaceChildren();
  let pos = 0;
  for (const w of out.words) {
    box.append(text.slice(pos, w.start));
    const span = el("span", { className: "word", textContent: text.slice(w.start, w.end) });
    if (w.id === null) {
      span.classList.add("unseen");
      span.title = `${w.status}: not seen by the model`;
    } else {
      const alpha = (0.85 * Math.abs(w.contribution) / scale).toFixed(3);
      span.style.backgroundColor = w.contribution >= 0 ? `rgba(26, 127, 55, ${alpha})` : `rgba(207, 34, 46, ${alpha})`;
      span.title = `${w.contribution >= 0 ? "+" : ""}${w.contribution.toFixed(4)} (${w.status}, id ${w.id})`;
    }
    span.dataset.contribution = w.contribution;
    box.append(span);
    pos = w.end;
  }
  box.append(text.slice(pos));
  $("result").hidden = false;
}

async function explain(event) {
  event.preventDefault();
  const button = event.submitter;
  const text = $("text").value;
  $("explain-error").textContent = "";
  button.disabled = true;
  try {
    const response = await api(`../v1/models/${encodeURIComponent($("model-select").value)}/explain`, {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ text, method: $("method").value }),
    });
    renderExplanation(text, await response.json());
  } catch (e) {
    $("explain-error").textContent = e.message;
  } finally {
    button.disabled = false;
  }
}

// File scoring: XMLHttpRequest rather than fetch, for upload and download progress.
function score(event) {
  event.preventDefault();
  const file = $("score-file").files[0], name = $("model-select").value;
  const bar = $("score-progress"), status = $("score-status"), link = $("score-download"), button = event.submitter;
  const query = new URLSearchParams({ text_column: $("text-column").value || "text" });
  const form = new FormData();
  form.append("file", file);
  const xhr = new XMLHttpRequest();
  xhr.open("POST", `../v1/models/${encodeURIComponent(name)}/score?${query}`);
  for (const [k, v] of Object.entries(authHeaders())) xhr.setRequestHeader(k, v);
  xhr.responseType = "blob";
  xhr.upload.onprogress = (e) => {
    if (e.lengthComputable) { bar.value = e.loaded / e.total; status.textContent = `Uploading: ${percent(e.loaded / e.total)}`; }
  };
  xhr.onprogress = (e) => { status.textContent = `Scoring: ${(e.loaded / 1024).toFixed(0)} KiB of results received`; };
  xhr.onload = async () => {
    button.disabled = false;
    const text = await xhr.response.text();
    if (xhr.status !== 200) {
      bar.hidden = true;
      status.textContent = "";
      $("score-error").textContent = (await errorOf(xhr.status, text)).message;
      return;
    }
    const last = JSON.parse(text.trimEnd().split("\n").pop());
    bar.value = 1;
    status.textContent = last.summary
      ? `Done: ${last.summary.rows} rows, ${last.summary.scored} scored, ${last.summary.errors} errors, in ${last.summary.seconds} s`
      : `Stopped: ${last.error || "see the last line of the results"}`;
    link.href = URL.createObjectURL(xhr.response);
    link.download = `${file.name.replace(/\.[^.]*$/, "")}.${name}.jsonl`;
    link.hidden = false;
  };
  xhr.onerror = () => { button.disabled = false; $("score-error").textContent = "the connection failed"; };
  $("score-error").textContent = "";
  link.hidden = true;
  bar.hidden = false;
  bar.value = 0;
  button.disabled = true;
  xhr.send(form);
}

function showLoadError(e) {
  if (e.status !== 401) $("model-list").replaceChildren(el("p", { className: "error", textContent: e.message }));
}

$("key-form").addEventListener("submit", (event) => {
  event.preventDefault();
  sessionStorage.setItem(KEY, $("key-input").value.trim());
  $("key-input").value = "";
  loadModels().catch(showLoadError);
});
$("explain-form").addEventListener("submit", explain);
$("score-form").addEventListener("submit", score);
loadModels().catch(showLoadError);
