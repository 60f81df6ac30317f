"""The sequence extension against what a client would otherwise do, side by side in one run: a text that
arrives in chunks (a stream of characters: a chat, a transcript), read after each chunk. With the state held
by the server, each chunk is one step (`sequence_id`); without it, the client sends the whole text so far
every time. One server with two workers (the state shared through their directory), tritonclient.http,
sequential requests, the bundled character language model.

    python bench/sequences.py [--texts 20] [--chunk 40]

Prints, per text length, the mean time to read a whole text chunk by chunk both ways and one chunk's cost as
a step against a stateless request of the same chunk; writes bench/results/sequences.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import tritonclient.http as triton_http

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import ROOT, free_port, machine, reviews, start_server, stop_server  # noqa: E402

LM = "reuters-char-rnn"


def text_input(text: str) -> triton_http.InferInput:
    tensor = triton_http.InferInput("text", [1], "BYTES")
    tensor.set_data_from_numpy(np.array([text.encode()], dtype=object))
    return tensor


def read_in_steps(client, text: str, chunk: int, sequence_id: int) -> tuple[float, np.ndarray]:
    pieces = [text[i:i + chunk] for i in range(0, len(text), chunk)]
    started = time.perf_counter()
    for i, piece in enumerate(pieces):
        result = client.infer(LM, [text_input(piece)], sequence_id=sequence_id, sequence_start=i == 0,
                              sequence_end=i == len(pieces) - 1)
    return time.perf_counter() - started, result.as_numpy("probabilities")


def read_by_resending(client, text: str, chunk: int) -> tuple[float, np.ndarray]:
    started = time.perf_counter()
    for end in range(chunk, len(text) + chunk, chunk):
        result = client.infer(LM, [text_input(text[:end])])
    return time.perf_counter() - started, result.as_numpy("probabilities")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--texts", type=int, default=20, help="texts per length")
    ap.add_argument("--chunk", type=int, default=40, help="characters per chunk")
    args = ap.parse_args()
    port = free_port()
    cmd = [sys.executable, "-m", "rnnserve.service", "--models-dir", str(ROOT / "models"), "--port", str(port),
           "--workers", "2", "--grpc-port", "0", "--no-access-log"]
    proc = start_server(cmd, port)
    rows = []
    try:
        client = triton_http.InferenceServerClient(f"127.0.0.1:{port}")
        pool = [r for r in reviews(2000) if len(r) >= 2000]
        for length in (200, 1000, 2000):
            texts = [t[:length] for t in pool[:args.texts]]
            read_by_resending(client, texts[0], args.chunk)  # warm both paths
            read_in_steps(client, texts[0], args.chunk, 1)
            steps, resend, diffs = [], [], []
            for n, text in enumerate(texts):
                seconds, p_steps = read_in_steps(client, text, args.chunk, n + 2)
                steps.append(seconds)
                seconds, p_whole = read_by_resending(client, text, args.chunk)
                resend.append(seconds)
                diffs.append(float(np.abs(p_steps - p_whole).max()))
            rows.append({"chars": length, "chunks": -(-length // args.chunk),
                         "steps_ms": 1000 * statistics.mean(steps), "resend_ms": 1000 * statistics.mean(resend),
                         "max_abs_diff": max(diffs)})
        one = "Oil prices rose sharply on Monday after"[:args.chunk]
        plain, step = [], []
        client.infer(LM, [text_input(one)], sequence_id=10_000, sequence_start=True)
        for _ in range(200):
            started = time.perf_counter()
            client.infer(LM, [text_input(one)])
            plain.append(time.perf_counter() - started)
            started = time.perf_counter()
            client.infer(LM, [text_input(one)], sequence_id=10_000)
            step.append(time.perf_counter() - started)
    finally:
        stop_server(proc)
    print(f"{LM}, chunks of {args.chunk} characters, {args.texts} texts a length, 2 workers ({machine()})")
    print(f"{'chars':>6} {'chunks':>6} {'in steps ms':>12} {'resending ms':>13} {'speed-up':>9} {'max |dp|':>9}")
    for r in rows:
        print(f"{r['chars']:>6} {r['chunks']:>6} {r['steps_ms']:>12.1f} {r['resend_ms']:>13.1f} "
              f"{r['resend_ms'] / r['steps_ms']:>8.2f}x {r['max_abs_diff']:>9.1e}")
    one_chunk = {"plain_ms": 1000 * statistics.median(plain), "step_ms": 1000 * statistics.median(step)}
    print(f"one {len(one)}-character chunk, median of 200: {one_chunk['plain_ms']:.2f} ms stateless, "
          f"{one_chunk['step_ms']:.2f} ms as a sequence step (state read and written)")
    out = ROOT / "bench" / "results" / "sequences.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"date": datetime.now(UTC).isoformat(), "machine": machine(), "chunk": args.chunk,
                               "rows": rows, "one_chunk": one_chunk}, indent=2))


if __name__ == "__main__":
    main()
