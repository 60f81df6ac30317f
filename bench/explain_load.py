"""Do maximum-size explanations stall the model's other traffic? N clients each send maximum-size /explain
requests (MAX_EXPLAIN_WORDS words of real reviews, with a character outside the BMP) to a one-worker server,
round after round, while a separate process alternates a one-text /predict on the same model and
/health/live every 10 ms. Prints both probes' latencies during the explanations, how many explanations were
answered and refused (503 past MAX_EXPLANATIONS), and the worker's peak memory.

    python bench/explain_load.py [--model imdb-gru-ensemble] [--explains 8] [--rounds 3] [--max-explanations 2]

Targets: /predict p99 <= 1 s, /health/live p99 <= 50 ms, worker peak under 1 GB, on imdb-gru-ensemble (the bundled
ensemble, its 64-variant run ~230 ms on 2 CPUs). Writes bench/results/explain_load.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import ROOT, free_port, machine, reviews, rss_mb, start_server, stop_server  # noqa: E402
from rnnserve.service.core.tokenizer import Tokenizer, TokenizerSpec  # noqa: E402


def probe(base: str, model: str, stop, out) -> None:
    samples: dict[str, list] = {"predict": [], "live": []}
    with httpx.Client(base_url=base, timeout=60) as client:
        while not stop.is_set():
            for kind, call in (("predict", lambda: client.post(f"/v1/models/{model}/predict",
                                                              json={"text": "a fine film, well acted"})),
                               ("live", lambda: client.get("/health/live"))):
                started = time.time()
                call().raise_for_status()
                samples[kind].append((started, time.time() - started))
                time.sleep(0.005)
    out.put(samples)


async def explain_rounds(base: str, model: str, text: str, clients: int, rounds: int) -> tuple[list, list]:
    spans, codes = [], []
    async with httpx.AsyncClient(base_url=base, timeout=600) as http:
        for _ in range(rounds):
            started = time.time()
            answers = await asyncio.gather(*(http.post(f"/v1/models/{model}/explain", json={"text": text})
                                             for _ in range(clients)), return_exceptions=True)
            spans.append((started, time.time()))
            codes += [r.status_code if isinstance(r, httpx.Response) else type(r).__name__ for r in answers]
    return spans, codes


def percentiles(samples, spans) -> dict:
    during = sorted(s * 1000 for t, s in samples if any(a <= t <= b for a, b in spans))
    if not during:
        return {"n": 0}
    return {"n": len(during), "p50_ms": during[len(during) // 2],
            "p99_ms": during[min(len(during) - 1, int(len(during) * 0.99))], "max_ms": during[-1]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="imdb-gru-ensemble")
    ap.add_argument("--models-dir", default=str(ROOT / "models"))
    ap.add_argument("--explains", type=int, default=8, help="concurrent explanation clients")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--max-explanations", type=int, default=None, help="the server's limit (default: its own)")
    args = ap.parse_args()
    package = max((Path(args.models_dir) / args.model).iterdir(), key=lambda p: int(p.name))
    tokenizer = Tokenizer(TokenizerSpec.load(package / "tokenizer.json"))
    text = "😀 " + " ".join(reviews(200))
    text = text[:tokenizer.word_spans(text)[1999][2]]  # MAX_EXPLAIN_WORDS (2000) words, the first outside the BMP
    repo = Path(tempfile.mkdtemp(prefix="rnnserve-bench-")) / "models"
    shutil.copytree(Path(args.models_dir) / args.model, repo / args.model)  # this model alone: its memory only
    port = free_port()
    limit = [] if args.max_explanations is None else ["--max-explanations", str(args.max_explanations)]
    proc = start_server([sys.executable, "-m", "rnnserve.service", "--models-dir", str(repo), "--port", str(port),
                         "--workers", "1", "--no-access-log", "--log-level", "warning", *limit], port)
    base = f"http://127.0.0.1:{port}"
    try:
        httpx.post(f"{base}/v1/models/{args.model}/explain", json={"text": "a fine film"}, timeout=60)
        rss_before = rss_mb(proc.pid)
        stop, out = multiprocessing.Event(), multiprocessing.Queue()
        prober = multiprocessing.Process(target=probe, args=(base, args.model, stop, out))
        prober.start()
        time.sleep(0.5)
        spans, codes = asyncio.run(explain_rounds(base, args.model, text, args.explains, args.rounds))
        stop.set()
        samples = out.get(timeout=60)
        prober.join()
        peak = rss_mb(proc.pid, "VmHWM")
    finally:
        stop_server(proc)
        shutil.rmtree(repo.parent, ignore_errors=True)
    report = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "machine": machine(),
              "model": args.model, "explains_at_once": args.explains, "rounds": args.rounds,
              "max_explanations": args.max_explanations or "default", "text_chars": len(text),
              "answered": codes.count(200), "refused_503": codes.count(503),
              "other": {str(c): codes.count(c) for c in set(codes) - {200, 503}},
              "round_s_median": sorted(b - a for a, b in spans)[len(spans) // 2],
              "predict": percentiles(samples["predict"], spans), "live": percentiles(samples["live"], spans),
              "worker_rss_before_mb": rss_before, "worker_peak_mb": peak}
    p, live = report["predict"], report["live"]
    print(f"{report['machine']}, {args.model}, {args.explains} maximum explanations at once x {args.rounds} rounds "
          f"(limit {report['max_explanations']}): {report['answered']} answered, {report['refused_503']} refused "
          f"(503), other: {report['other'] or 'none'}; round {report['round_s_median']:.1f} s\n"
          f"  /predict on the same model during them: n={p.get('n')}, p50 {p.get('p50_ms', 0):.0f} ms, "
          f"p99 {p.get('p99_ms', 0):.0f} ms, max {p.get('max_ms', 0):.0f} ms\n"
          f"  /health/live: n={live.get('n')}, p50 {live.get('p50_ms', 0):.1f} ms, p99 {live.get('p99_ms', 0):.1f} ms,"
          f" max {live.get('max_ms', 0):.1f} ms\n"
          f"  worker memory: {rss_before:.0f} MB before, peak {peak:.0f} MB")
    (ROOT / "bench" / "results").mkdir(exist_ok=True)
    (ROOT / "bench" / "results" / "explain_load.json").write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
