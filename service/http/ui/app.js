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

const byName = new Map(); // name -> its description, for the form that matches its task
const TASK_HINTS = {
  "text-classification": "classifies text: explain a text, or score a file",
  "sequence-classification": "classifies numeric sequences",
  "sequence-regression": "predicts values from numeric sequences",
  "text-generation": "continues a prompt, one character at a time",
};

function testFigure(m) {
  const test = (m.metrics || {}).test || {};
  if (test.accuracy !== undefined && m.task !== "text-generation") return ["test accuracy", `${percent(test.accuracy)} of ${test.examples}`];
  if (test.bits_per_char !== undefined) return ["test bits per char", `${test.bits_per_char.toFixed(3)} (next char right ${percent(test.accuracy)})`];
  if (test.mse !== undefined) return ["test MSE", `${test.mse.toFixed(4)} (R² ${test.r2.toFixed(3)})`];
  return ["test", "n/a"];
}

// Where a package came from: trained here, or imported from a file with its own preprocessing.
function origin(source, distillation) {
  if (distillation && distillation.teacher) {
    const t = distillation.teacher;
    return `distilled from ${t.name} v${t.version} (temperature ${distillation.temperature}, alpha ${distillation.alpha})`;
  }
  if (!source || source.kind !== "imported") return "trained here";
  const prep = source.preprocessing || {};
  const how = { "keras-dataset": `keras.datasets.${prep.dataset} ids`, "keras-tokenizer": `Tokenizer ${prep.file}`,
                "text-vectorization": prep.in_model ? "its TextVectorization layer" : `TextVectorization ${prep.file}`,
                "vocabulary-file": `vocabulary ${prep.file}` }[prep.kind] || prep.kind;
  return `imported from ${source.file} (${how})`;
}

// Show the forms of the chosen model's task only.
function showForms() {
  const m = byName.get($("model-select").value);
  if (!m) return;
  for (const section of document.querySelectorAll("section[data-task]")) {
    section.hidden = !section.dataset.task.split(" ").includes(m.task);
  }
  $("task-hint").textContent = `${m.task}: ${TASK_HINTS[m.task] || ""}`;
  if (m.input) $("sequence-shape").textContent = `${m.input.steps} x ${m.input.features}`;
}

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
    byName.set(m.name, m);
    select.append(el("option", { value: m.name, textContent: `${m.name} (v${m.version})` }));
    const arch = m.architecture || {};
    const facts = [
      ["task", m.task],
      ["model", [arch.ensemble > 1 ? `${arch.ensemble} x` : "", arch.bidirectional ? "bidirectional" : "",
                 arch.layers > 1 ? `${arch.layers} x` : "", (arch.cell || "").toUpperCase(),
                 arch.units ? `(${arch.units})` : ""].filter(Boolean).join(" ")],
      testFigure(m),
      m.input ? ["input", `${m.input.steps} steps x ${m.input.features} features`] : ["max length", `${m.maxlen} tokens`],
      ["runs on", `${m.provider}, ${m.threads} threads`],
      ["source", origin(m.source, m.distillation)],
    ];
    if (m.labels.length) facts.splice(1, 0, ["labels", m.labels.length > 6 ? `${m.labels.length} classes` : m.labels.join(", ")]);
    const dl = el("dl");
    for (const [k, v] of facts) dl.append(el("dt", { textContent: k }), el("dd", { textContent: v }));
    const card = el("div", { className: "card" }, el("h3", { textContent: `${m.name} v${m.version}` }), dl);
    list.append(card);
    if (m.task === "text-classification") {
      const drift = el("div", { className: "drift" });
      card.append(drift);
      showDrift(drift, m);
    }
    for (const plot of m.plots || []) {
      const img = el("img", { alt: `${m.name}: ${plot}` });
      card.append(img);
      api(`../v1/models/${encodeURIComponent(m.name)}/versions/${m.version}/files/${encodeURIComponent(plot)}`)
        .then((r) => r.blob()).then((b) => { img.src = URL.createObjectURL(b); })
        .catch((e) => img.replaceWith(el("p", { className: "error", textContent: `${plot}: ${e.message}` })));
    }
  }
  $("key-prompt").hidden = true;
  showForms();
}

// Drift: per signal, the reference's share of each bin (grey) beside the live window's (blue), as SVG bars,
// with its PSI; refreshed while the page is open.
const SVG = "http://www.w3.org/2000/svg";
function svg(tag, attrs) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  return node;
}

function driftPlot(signal, entry) {
  const share = (counts) => { const n = counts.reduce((a, b) => a + b, 0); return counts.map((c) => (n ? c / n : 0)); };
  const ref = share(entry.reference), live = share(entry.live);
  const top = Math.max(...ref, ...live, 0.01), w = 220, h = 48, step = w / ref.length;
  const plot = svg("svg", { width: w, height: h, viewBox: `0 0 ${w} ${h}`, role: "img",
                            "aria-label": `${signal}: reference and live shares per bin` });
  ref.forEach((r, i) => {
    const title = svg("title", {});
    title.textContent = `${entry.bins[i]}: reference ${percent(r)}, live ${percent(live[i])}`;
    const g = svg("g", {});
    g.append(title,
      svg("rect", { x: i * step + 1, y: h - (h * r) / top, width: step / 2 - 1, height: (h * r) / top, class: "ref" }),
      svg("rect", { x: i * step + step / 2, y: h - (h * live[i]) / top, width: step / 2 - 1, height: (h * live[i]) / top,
                    class: "live" }));
    plot.append(g);
  });
  const score = entry.score === null ? "no score yet" : `PSI ${entry.score.toFixed(3)}`;
  return el("figure", { className: entry.alert ? "alert" : "" }, plot,
            el("figcaption", { textContent: `${signal}: ${score}` }));
}

async function showDrift(box, m) {
  try {
    const report = await (await api(`../v1/models/${encodeURIComponent(m.name)}/versions/${m.version}/drift`)).json();
    if (!report.available) {
      box.replaceChildren(el("p", { className: "muted", textContent: `drift unavailable: ${report.reason}` }));
      return;
    }
    const w = report.window;
    box.replaceChildren(el("p", { textContent: `drift: ${w.texts} of the last ${w.size} texts (scored from ${w.min_count}; `
                                  + `alert at PSI ${report.threshold}) against ${report.reference.texts} reference texts` }),
                        ...Object.entries(report.signals).map(([signal, entry]) => driftPlot(signal, entry)));
  } catch (e) {
    box.replaceChildren(el("p", { className: "error", textContent: `drift: ${e.message}` }));
    return;
  }
  if (box.isConnected) setTimeout(() => showDrift(box, m), 10000);
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
  // The API's spans count code points (Python), JavaScript strings UTF-16 units (two for an emoji): map them.
  const unit = [0];
  for (const ch of text) unit.push(unit[unit.length - 1] + ch.length);
  let pos = 0;
  for (const w of out.words) {
    box.append(text.slice(pos, unit[w.start]));
    const span = el("span", { className: "word", textContent: text.slice(unit[w.start], unit[w.end]) });
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
    pos = unit[w.end];
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

// Numeric sequences: one per line, T x F numbers each, sent as [N][T][F].
async function predictSequences(event) {
  event.preventDefault();
  const m = byName.get($("model-select").value), button = event.submitter;
  $("sequence-error").textContent = "";
  const lines = $("sequence-input").value.split("\n").map((l) => l.trim()).filter(Boolean);
  const sequences = lines.map((line) => {
    const numbers = line.split(/[\s,]+/).map(Number);
    const steps = [];
    for (let t = 0; t < numbers.length; t += m.input.features) steps.push(numbers.slice(t, t + m.input.features));
    return steps;
  });
  button.disabled = true;
  try {
    const response = await api(`../v1/models/${encodeURIComponent(m.name)}/predict`, {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ sequences, top_k: 3 }),
    });
    const body = $("sequence-result").tBodies[0];
    body.replaceChildren();
    (await response.json()).predictions.forEach((p, i) => {
      const shown = p.label !== undefined ? `${p.label} (${p.top_k.map((k) => `${k.label} ${percent(k.probability)}`).join(", ")})`
        : p.value !== undefined ? p.value.toFixed(4) : p.values.map((v) => v.toFixed(3)).join(", ");
      body.append(el("tr", {}, el("td", { textContent: i + 1 }), el("td", { textContent: shown })));
    });
    $("sequence-result").hidden = false;
  } catch (e) {
    $("sequence-error").textContent = e.message;
  } finally {
    button.disabled = false;
  }
}

// Generation: server-sent events read from the response body as they arrive, each character shown at once.
async function generate(event) {
  event.preventDefault();
  const button = event.submitter, out = $("generated-text");
  const seed = $("seed").value === "" ? undefined : Number($("seed").value);
  const request = { prompt: $("prompt").value, max_chars: Number($("max-chars").value),
                    temperature: Number($("temperature").value), top_k: Number($("top-k").value), seed, stream: true };
  $("generate-error").textContent = "";
  $("generated-prompt").textContent = request.prompt;
  out.textContent = "";
  delete $("generated").dataset.done;
  $("generated").hidden = false;
  button.disabled = true;
  try {
    const response = await api(`../v1/models/${encodeURIComponent($("model-select").value)}/generate`, {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(request),
    });
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value;
      const events = buffer.split("\n\n");
      buffer = events.pop();
      for (const e of events) {
        const data = JSON.parse(e.slice(e.indexOf("data: ") + 6));
        if (e.startsWith("event: error")) throw new ApiError(500, data.error.message);
        if (e.startsWith("event: done")) $("generated").dataset.done = "true";
        else out.textContent += data.text;
      }
    }
  } catch (e) {
    $("generate-error").textContent = e.message;
  } finally {
    button.disabled = false;
  }
}

// Rollout: the chosen model's labels, split and shadow, and the shadow's comparison (the whole server's).
const ROLLOUT_POLL_MS = 5000;
const agreementSeen = new Map(); // model -> {pairs, agreed, points: [agreement since the previous look]}

function showRolloutError(e) { $("rollout-error").textContent = e.message; }

async function refreshRollout() {
  const name = $("model-select").value;
  if (!name) return;
  const { rollout, comparison } = await (await api(`../v1/models/${encodeURIComponent(name)}/rollout`)).json();
  $("rollout-error").textContent = rollout.file_problem ? `rollout.json refused: ${rollout.file_problem}` : "";
  const labels = Object.entries(rollout.labels).map(([k, v]) => `${k} → v${v}`).join(", ") || "none";
  const plan = [`labels: ${labels} (from ${rollout.source})`];
  if (rollout.canary_share) plan.push(`canary: ${percent(rollout.canary_share)} of unversioned predictions` +
                                      (rollout.sticky_header ? `, sticky by ${rollout.sticky_header}` : ", at random"));
  if (rollout.shadow_share) plan.push(`shadow: ${rollout.shadow} on ${percent(rollout.shadow_share)}`);
  $("rollout-plan").textContent = plan.join("; ");
  const pairs = comparison.compared.reduce((n, c) => n + c.pairs, 0);
  const agreed = comparison.compared.reduce((n, c) => n + c.agreed, 0);
  const ms = (role) => { const l = comparison.latency[role]; return l && l.mean_s !== null ? `${(1000 * l.mean_s).toFixed(2)} ms` : "n/a"; };
  const facts = [["compared", `${pairs} inputs`], ["agreement", pairs ? percent(agreed / pairs) : "n/a"],
                 ["mean latency", `primary ${ms("primary")}, shadow ${ms("shadow")}`],
                 ["shadow errors", `${comparison.shadow_errors}`], ["shed", `${comparison.shed}`]];
  const dl = $("rollout-figures");
  dl.replaceChildren();
  for (const [k, v] of facts) dl.append(el("dt", { textContent: k }), el("dd", { textContent: v }));
  const seen = agreementSeen.get(name) || { pairs, agreed, points: [] };
  if (pairs > seen.pairs) seen.points = [...seen.points, (agreed - seen.agreed) / (pairs - seen.pairs)].slice(-60);
  Object.assign(seen, { pairs, agreed });
  agreementSeen.set(name, seen);
  drawAgreement(seen.points);
  const bars = $("delta-bars");
  bars.replaceChildren();
  for (const c of comparison.compared) {
    bars.append(el("p", { className: "hint", textContent: `|Δp| of v${c.primary} vs v${c.shadow} (share of inputs)` }));
    let below = 0;
    for (const bucket of c.delta_p) {
      const share = c.pairs ? (bucket.count - below) / c.pairs : 0;
      below = bucket.count;
      const fill = el("div", { className: "fill" });
      fill.style.width = percent(share);
      bars.append(el("div", { className: "bar" }, el("span", { textContent: `≤ ${bucket.le}` }),
                     el("div", { className: "track" }, fill), el("span", { className: "value", textContent: percent(share) })));
    }
  }
}

function drawAgreement(points) {
  $("agreement").hidden = points.length < 2;
  const svg = $("agreement-chart");
  const line = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
  line.setAttribute("points", points.map((a, i) => `${(300 * i) / Math.max(1, points.length - 1)},${60 - 58 * a}`).join(" "));
  line.setAttribute("fill", "none");
  line.setAttribute("stroke", "#0969da");
  svg.replaceChildren(line);
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
$("sequence-form").addEventListener("submit", predictSequences);
$("generate-form").addEventListener("submit", generate);
$("model-select").addEventListener("change", showForms);
$("model-select").addEventListener("change", () => refreshRollout().catch(showRolloutError));
setInterval(() => { if (!document.hidden && $("key-prompt").hidden) refreshRollout().catch(showRolloutError); }, ROLLOUT_POLL_MS);
$("score-form").addEventListener("submit", score);
loadModels().then(() => refreshRollout()).catch(showLoadError);
