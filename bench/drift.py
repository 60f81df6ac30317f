"""What drift costs on the request path: single-text /v1 requests at c=1 and c=64 with drift off and on (its
defaults), side by side in one run, in rounds of alternating order (off-on, on-off, ...) so the machine's drift over the
run falls on both alike. Each round is a fresh server (one worker) of the same model and reviews.

    python bench/drift.py [--model imdb-lstm-tutorial] [--duration 8] [--rounds 4]

Needs `wrk`. Prints each round, the median requests per second of each setting with on/off, and what the
observer itself costs per prediction in this process (timeit: one text, and a 64-text batch), and writes
bench/results/drift.json.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import tempfile
import timeit
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import ROOT, free_port, machine, reviews, start_server, stop_server  # noqa: E402
from bench.load import lua_script, run_wrk  # noqa: E402


def observer_us() -> dict[str, float]:
    """Microseconds drift's observer spends recording one prediction of 1 and of 64 texts (the request path's
    whole share: binning into the ring; no distance, no I/O)."""
    import numpy as np

    from rnnserve.service.core.profile import sizes
    from rnnserve.service.core.tokenizer import TokenStats
    from rnnserve.service.drift import LiveWindow

    window = LiveWindow(sizes(2), 1000)
    one = [TokenStats(kept=200, oov=3, truncated=False, length=201, words=203)]
    probabilities = np.array([[0.2, 0.8]], dtype=np.float32)
    out = {}
    for n, number in ((1, 20000), (64, 2000)):
        stats, probs = one * n, np.repeat(probabilities, n, axis=0)
        run = functools.partial(window.add, stats, probs)
        out[f"{n} text{'s' if n > 1 else ''}"] = min(timeit.repeat(run, number=number, repeat=3)) / number * 1e6
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="imdb-lstm-tutorial")
    ap.add_argument("--models-dir", default=str(ROOT / "models"))
    ap.add_argument("--duration", type=int, default=8, help="seconds per measurement")
    ap.add_argument("--rounds", type=int, default=4, help="off/on pairs (an even number balances the order)")
    args = ap.parse_args()
    texts = [t for t in reviews(2000) if 800 <= len(t) <= 1000][:50]
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "single.lua"
        script.write_text(lua_script([json.dumps({"text": t}) for t in texts]))
        for round_ in range(args.rounds):
            for drift in (False, True) if round_ % 2 == 0 else (True, False):
                port = free_port()
                cmd = [sys.executable, "-m", "rnnserve.service", "--models-dir", args.models_dir, "--workers", "1",
                       "--no-access-log", "--log-level", "warning", "--port", str(port),
                       "--drift" if drift else "--no-drift"]
                proc = start_server(cmd, port)
                url = f"http://127.0.0.1:{port}/v1/models/{args.model}/predict"
                try:
                    run_wrk(url, script, 8, 2)  # warm-up
                    for c in (1, 64):
                        r = run_wrk(url, script, c, args.duration)
                        rows.append({"round": round_, "drift": drift, **r})
                        setting = "on" if drift else "off"
                        print(f"round {round_} drift {setting:3} c={c:<3} {r['requests_per_s']:8.0f} req/s  "
                              f"p50 {r['p50_ms']:.2f} ms  p99 {r['p99_ms']:.2f} ms  errors {r['errors']}", flush=True)
                finally:
                    stop_server(proc)
    summary = {}
    print(f"\n{machine()}, model {args.model}, {args.duration} s per measurement, {args.rounds} rounds (median)")
    print(f"{'c':>4} {'drift off req/s':>16} {'drift on req/s':>15} {'on/off':>7}")
    for c in (1, 64):
        off, on = (statistics.median(r["requests_per_s"] for r in rows if r["connections"] == c and r["drift"] == d)
                   for d in (False, True))
        summary[c] = {"off": off, "on": on, "ratio": on / off}
        print(f"{c:4d} {off:16.0f} {on:15.0f} {on / off:6.2f}x")
    cost = observer_us()
    print("observer per prediction: " + ", ".join(f"{k} {v:.1f} us" for k, v in cost.items()))
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / "drift.json").write_text(json.dumps({"date": datetime.now(UTC).isoformat(timespec="seconds"),
                                                "machine": machine(), "model": args.model, "rows": rows,
                                                "summary": summary, "observer_us": cost}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
