"""What shadow traffic costs the primary answers (docs/rollout.md): one server (2 workers) over imdb-lstm
version 1 and a copy of it as version 2, driven with wrk by real IMDB reviews of 800-1,000 characters at c=1
and c=16, with no shadow and with 100% shadow on version 2, side by side in one run (alternating rounds, the
server running throughout). Prints p50/p99 of the primary answers, their ratio, and the shadow runs compared
and shed in each 100% scenario; writes bench/results/rollout.json.

    python bench/rollout.py [--duration 8] [--rounds 2] [--workers 2]

Needs wrk (apt-get install wrk).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import ROOT, free_port, machine, reviews, start_server, stop_server  # noqa: E402
from bench.load import lua_script, run_wrk  # noqa: E402

NAME = "imdb-lstm"


def counts(client: httpx.Client) -> tuple[int, int]:
    """(inputs compared, shadow runs shed) so far, the whole server's."""
    summary = client.get(f"/v1/models/{NAME}/rollout").json()["comparison"]
    return sum(c["pairs"] for c in summary["compared"]) + summary["shadow_errors"], summary["shed"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=int, default=8, help="seconds of each wrk run")
    ap.add_argument("--rounds", type=int, default=2, help="alternating rounds of every scenario")
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk is not installed (apt-get install wrk)")
    texts = [t for t in reviews(3000) if 800 <= len(t) <= 1000][:50]
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        for version in ("1", "2"):
            shutil.copytree(ROOT / "models" / NAME / "1", tmp / "models" / NAME / version)
        script = tmp / "single.lua"
        script.write_text(lua_script([json.dumps({"text": t}) for t in texts]))
        port = free_port()
        proc = start_server([sys.executable, "-m", "rnnserve.service", "--models-dir", str(tmp / "models"), "--port",
                             str(port), "--grpc-port", "0", "--workers", str(args.workers), "--no-access-log",
                             "--log-level", "warning"], port)
        url = f"http://127.0.0.1:{port}"
        results: dict[tuple[str, int], list[dict]] = {}
        try:
            with httpx.Client(base_url=url, timeout=60) as client:
                predict = f"{url}/v1/models/{NAME}/predict"
                run_wrk(predict, script, 8, 2)  # warm-up
                for _ in range(args.rounds):
                    for shadow in ("none", "100%"):
                        rollout = {"labels": {"stable": 1}} | (
                            {"shadow": "2", "shadow_share": 1.0} if shadow == "100%" else {})
                        client.put(f"/v1/models/{NAME}/rollout", json=rollout).raise_for_status()
                        for c in (1, 16):
                            before = counts(client)
                            r = run_wrk(predict, script, c, args.duration)
                            after = counts(client)
                            r["compared"], r["shed"] = after[0] - before[0], after[1] - before[1]
                            results.setdefault((shadow, c), []).append(r)
        finally:
            stop_server(proc)
    print(f"# bench/rollout.py --duration {args.duration} --rounds {args.rounds} --workers {args.workers}; "
          f"{machine()}; {datetime.now(UTC):%Y-%m-%d}")
    print(f"{'scenario':<18} {'req/s':>7} {'p50 ms':>7} {'p99 ms':>7} {'p99 x':>6} {'compared':>9} {'shed':>7}")
    report = []
    for c in (1, 16):
        base_p99 = statistics.median(r["p99_ms"] for r in results["none", c])
        for shadow in ("none", "100%"):
            runs = results[shadow, c]
            p50, p99 = (statistics.median(r[k] for r in runs) for k in ("p50_ms", "p99_ms"))
            rps = statistics.median(r["requests_per_s"] for r in runs)
            compared, shed = sum(r["compared"] for r in runs), sum(r["shed"] for r in runs)
            print(f"c={c:<2} shadow {shadow:<6} {rps:>7.0f} {p50:>7.2f} {p99:>7.2f} {p99 / base_p99:>6.2f} "
                  f"{compared:>9} {shed:>7}")
            report.append({"connections": c, "shadow": shadow, "requests_per_s": rps, "p50_ms": p50, "p99_ms": p99,
                           "p99_ratio": p99 / base_p99, "compared": compared, "shed": shed, "runs": runs})
    out = ROOT / "bench" / "results" / "rollout.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"machine": machine(), "date": f"{datetime.now(UTC):%Y-%m-%d}", "duration_s":
                               args.duration, "rounds": args.rounds, "workers": args.workers, "results": report},
                              indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
