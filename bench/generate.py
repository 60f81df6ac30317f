"""What generation costs: characters per second from the runtime (in-process) against what a user would
otherwise write with the same ONNX file: feed the whole text so far and take the last step's logits, for
every new character (no state carried). Then N generations at once through the runtime, whose batcher
runs their steps together.

    python bench/generate.py [--model reuters-char-rnn] [--chars 500] [--concurrent 1,8,32]

Writes bench/results/generate.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import ROOT, machine  # noqa: E402
from rnnserve.service.runtime.base import RuntimeOptions  # noqa: E402
from rnnserve.service.runtime.generator import Sampling, TextGenerator  # noqa: E402

PROMPT = "The company said it expects "


def recompute_prefix(lm: TextGenerator, chars: int) -> float:
    """The baseline: the whole prefix through the graph for each character (greedy), chars per second."""
    ids = list(lm.encode_prompt(PROMPT))
    started = time.perf_counter()
    for _ in range(chars):
        ((logits, _),) = lm.run_batch([(np.array(ids), lm.zero_state())])
        ids.append(lm.first_id + int(logits[lm.first_id:].argmax()))
    return chars / (time.perf_counter() - started)


async def stepwise(lm: TextGenerator, chars: int, concurrent: int) -> float:
    """Step-wise generations through the runtime (greedy), all characters per second."""
    sampling = Sampling(max_chars=chars, temperature=0)

    async def one() -> int:
        return len([c async for c in lm.generate(PROMPT, sampling)])

    started = time.perf_counter()
    total = sum(await asyncio.gather(*(one() for _ in range(concurrent))))
    return total / (time.perf_counter() - started)


async def run(args) -> dict:
    lm = TextGenerator.open(ROOT / "models" / args.model / "1", RuntimeOptions(max_batch_size=64))
    await stepwise(lm, 50, 1)  # warm
    rows = {"recompute_prefix_1": recompute_prefix(lm, args.chars)}
    print(f"recompute the prefix, 1 generation: {rows['recompute_prefix_1']:10.0f} chars/s", flush=True)
    for n in args.concurrent:
        rows[f"stepwise_{n}"] = await stepwise(lm, args.chars, n)
        print(f"step-wise runtime, {n:3d} at once:  {rows[f'stepwise_{n}']:10.0f} chars/s "
              f"({rows[f'stepwise_{n}'] / rows['recompute_prefix_1']:.1f}x)", flush=True)
    await lm.close()
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="reuters-char-rnn")
    ap.add_argument("--chars", type=int, default=500)
    ap.add_argument("--concurrent", default="1,8,32")
    args = ap.parse_args()
    args.concurrent = [int(n) for n in args.concurrent.split(",")]
    print(f"{machine()}; {args.model}; {args.chars} characters per generation after a {len(PROMPT)}-character prompt")
    rows = asyncio.run(run(args))
    out = ROOT / "bench" / "results" / "generate.json"
    out.write_text(json.dumps({"machine": machine(), "model": args.model, "chars": args.chars, "chars_per_s": rows,
                               "at": datetime.now(UTC).isoformat(timespec="seconds")}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
