"""The CUDA provider against the CPU on the bundled packages, as served: same predictions, and how much faster.

    bash bench/gpu_check.sh [--wheelhouse DIR] [--skip-install] [options below]
    python bench/gpu_check.py [--models-dir models] [--texts FILE.jsonl] [--n 300] [--seconds 3] [--out FILE]

Starts two servers on free loopback ports over the same packages, one worker each, RNNSERVE_PROVIDER=cuda and
RNNSERVE_PROVIDER=cpu, and for every model they load:

- parity: text classifiers on the N raw texts in requests of 64 (labels identical, max |dp| <= 1e-4 over every
  label's probability), numeric-sequence models on 256 seeded random sequences (|dvalue| <= 1e-4), language
  models on greedy continuations (temperature 0) of a few prompts (identical text);
- speed: texts/s through POST /v1/models/{name}/predict, one client, at batch 1 (requests of one text) and
  batch 64 (requests of 64), for --seconds each, on each server.

Texts: JSON Lines with a "text" field (as rnnserve-score reads them), else the first N raw IMDB training reviews
from $RNNSERVE_DATA_DIR. Prints a Markdown table and writes --out (JSON). Exit status: 0 when every model is on
CUDAExecutionProvider and every parity check holds, 1 otherwise, 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import ROOT, free_port, reviews, start_server, stop_server  # noqa: E402

TOLERANCE = 1e-4  # the bound on |dp| between providers
BATCH = 64
PROMPTS = ["the company said ", "oil prices ", "shares of ", "the bank ", "trade "]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models-dir", type=Path, default=ROOT / "models", help="the model repository to serve")
    ap.add_argument("--texts", type=Path, help='JSON Lines with a "text" field (default: raw IMDB reviews)')
    ap.add_argument("--n", type=int, default=300, help="texts for the parity check (default 300)")
    ap.add_argument("--seconds", type=float, default=3.0, help="seconds per speed figure (default 3)")
    ap.add_argument("--provider", choices=["cuda", "cpu"], default="cuda",
                    help="the provider checked against the CPU (cpu: a dry run of the check on any machine)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "gpu_check.json")
    args = ap.parse_args(argv)
    if args.n < 1 or args.seconds <= 0:
        ap.error("--n must be at least 1 and --seconds above 0")
    if not args.models_dir.is_dir():
        ap.error(f"--models-dir {args.models_dir} is not a directory")
    if args.texts is not None and not args.texts.is_file():
        ap.error(f"--texts {args.texts} is not a file")
    return args


def read_texts(path: Path | None, n: int) -> list[str]:
    if path is None:
        return reviews(n)
    texts = []
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                texts.append(json.loads(line)["text"])
            if len(texts) == n:
                break
    return texts


def serve(models_dir: Path, provider: str, log: Path) -> tuple[object, str]:
    port = free_port()
    cmd = [sys.executable, "-m", "rnnserve.service", "--models-dir", str(models_dir), "--port", str(port),
           "--grpc-port", "0", "--workers", "1", "--provider", provider]
    try:
        return start_server(cmd, port, timeout=300, log=log), f"http://127.0.0.1:{port}"
    except (RuntimeError, TimeoutError):
        sys.stderr.write(log.read_text(errors="replace")[-4000:])
        raise


def models(client: httpx.Client) -> tuple[dict[str, dict], dict[str, list[str]]]:
    """The loaded models (name -> /v1/models/{name}: task, provider...) and the failed ones' reasons."""
    listing = client.get("/v1/models").raise_for_status().json()["models"]
    ready = {m["name"]: client.get(f"/v1/models/{m['name']}").raise_for_status().json() for m in listing
             if m["state"] == "ready"}
    return ready, {m["name"]: [f["reason"] for f in m["failed_versions"]] for m in listing if m["failed_versions"]}


def classify(client: httpx.Client, name: str, texts: list[str]) -> tuple[list[str], np.ndarray]:
    labels, probs = [], []
    for i in range(0, len(texts), BATCH):
        body = {"texts": texts[i:i + BATCH], "return_probabilities": True}
        for p in client.post(f"/v1/models/{name}/predict", json=body).raise_for_status().json()["predictions"]:
            labels.append(p["label"])
            probs.append(list(p["probabilities"].values()))  # in the package's label order
    return labels, np.array(probs)


def regress(client: httpx.Client, name: str, sequences: list) -> np.ndarray:
    out = []
    for i in range(0, len(sequences), BATCH):
        body = {"sequences": sequences[i:i + BATCH]}
        preds = client.post(f"/v1/models/{name}/predict", json=body).raise_for_status().json()["predictions"]
        out += [p.get("values", p.get("value")) for p in preds]
    return np.array(out, dtype=np.float64)


def generate(client: httpx.Client, name: str) -> list[str]:
    body = {"max_chars": 200, "temperature": 0.0}
    return [client.post(f"/v1/models/{name}/generate", json={**body, "prompt": p}).raise_for_status().json()["text"]
            for p in PROMPTS]


def sequences_for(info: dict, n: int = 256) -> list:
    steps, features = info["input"]["steps"], info["input"]["features"]
    x = np.random.default_rng(0).normal(size=(n, steps, features)).round(4)
    return x[..., 0].tolist() if features == 1 else x.tolist()


def texts_per_s(client: httpx.Client, name: str, body_for, batch: int, seconds: float) -> float:
    """One client's texts/s for `seconds`, after a warm-up request."""
    client.post(f"/v1/models/{name}/predict", json=body_for(0, batch)).raise_for_status()
    done, i, t0 = 0, 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        client.post(f"/v1/models/{name}/predict", json=body_for(i, batch)).raise_for_status()
        done += batch
        i += batch
    return done / (time.perf_counter() - t0)


def check_model(name: str, info: dict, gpu: httpx.Client, cpu: httpx.Client, texts: list[str],
                seconds: float) -> dict:
    row = {"model": name, "task": info["task"], "provider": info.get("provider")}
    if info["task"] == "text-generation":
        a, b = generate(gpu, name), generate(cpu, name)
        row.update(checked=len(a), same=a == b, max_dp=None, labels_differ=sum(x != y for x, y in zip(a, b)))
        return row
    if info["task"] == "sequence-regression":
        seqs = sequences_for(info)
        a, b = regress(gpu, name, seqs), regress(cpu, name, seqs)
        dp = float(np.max(np.abs(a - b)))
        row.update(checked=len(seqs), labels_differ=0, max_dp=dp, same=dp <= TOLERANCE)

        def body_for(i, k):
            return {"sequences": [seqs[(i + j) % len(seqs)] for j in range(k)]}
    else:
        (la, pa), (lb, pb) = classify(gpu, name, texts), classify(cpu, name, texts)
        differ = sum(x != y for x, y in zip(la, lb))
        dp = float(np.max(np.abs(pa - pb)))
        row.update(checked=len(texts), labels_differ=differ, max_dp=dp, same=differ == 0 and dp <= TOLERANCE)

        def body_for(i, k):
            return {"texts": [texts[(i + j) % len(texts)] for j in range(k)]}
    for batch in (1, BATCH):
        g, c = (texts_per_s(s, name, body_for, batch, seconds) for s in (gpu, cpu))
        row[f"gpu_b{batch}"], row[f"cpu_b{batch}"], row[f"speedup_b{batch}"] = g, c, g / c
    return row


def table(rows: list[dict]) -> str:
    out = ["| model | task | parity (texts, labels differing, max abs dp) "
           "| GPU b1 | CPU b1 | x | GPU b64 | CPU b64 | x |",
           "|---|---|---|--:|--:|--:|--:|--:|--:|"]
    for r in rows:
        dp = "-" if r["max_dp"] is None else f"{r['max_dp']:.1e}"
        parity = f"{'ok' if r['same'] else 'DIFFERS'} ({r['checked']}, {r['labels_differ']}, {dp})"
        speed = " | ".join(f"{r[k]:,.0f}" if "speedup" not in k else f"{r[k]:.1f}"
                           for k in ("gpu_b1", "cpu_b1", "speedup_b1", "gpu_b64", "cpu_b64", "speedup_b64")
                           if k in r) or "- | - | - | - | - | -"
        out.append(f"| {r['model']} | {r['task']} | {parity} | {speed} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    texts = read_texts(args.texts, args.n)
    t0 = time.monotonic()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    servers = []
    try:
        for role, provider in (("checked", args.provider), ("reference", "cpu")):
            servers.append(serve(args.models_dir, provider, args.out.with_name(f"gpu_check.{role}.log")))
        with httpx.Client(base_url=servers[0][1], timeout=120) as gpu, \
                httpx.Client(base_url=servers[1][1], timeout=120) as cpu:
            found, failed_loads = models(gpu)
            rows = [check_model(name, info, gpu, cpu, texts, args.seconds) for name, info in sorted(found.items())]
    finally:
        for proc, _ in servers:
            stop_server(proc)
    expected = {"cuda": "CUDAExecutionProvider", "cpu": "CPUExecutionProvider"}[args.provider]
    off_provider = [r["model"] for r in rows if r["provider"] != expected]
    failed = [r["model"] for r in rows if not r["same"]]
    print(table(rows))
    for name, reasons in failed_loads.items():
        print(f"{name} failed to load with {args.provider}: {'; '.join(reasons)}")
    print(f"\n{len(rows)} models, {len(texts)} texts, {time.monotonic() - t0:.0f} s; "
          f"not on {expected}: {off_provider or 'none'}; parity failed: {failed or 'none'}")
    args.out.write_text(json.dumps({"date": datetime.now(UTC).isoformat(timespec="seconds"), "provider": expected,
                                    "rows": rows, "failed_loads": failed_loads, "texts": len(texts),
                                    "seconds": args.seconds}, indent=1))
    return 1 if off_provider or failed or failed_loads or not rows else 0


if __name__ == "__main__":
    sys.exit(main())
