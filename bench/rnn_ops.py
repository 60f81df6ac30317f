"""onnxruntime latency of recurrent models: tf2onnx's Loop export vs the native RNN/GRU/LSTM export.

    python bench/rnn_ops.py [--repeat 50]

Models have the tutorial size (10,000 words, Embedding 32, 32 units, maxlen 200, Dense 32, sigmoid) with
random weights (latency does not depend on training). Unmasked models always take maxlen-wide input; masked
models are timed on 20-token texts and on maxlen texts (the native export takes them unpadded to maxlen).
Needs the [train] extra. Prints a table and writes bench/results/rnn_ops.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402

from bench.common import ROOT, machine, median_ms  # noqa: E402
from rnnserve.service.cpus import usable_cpus  # noqa: E402
from rnnserve.training.config import TrainConfig  # noqa: E402
from rnnserve.training.export import convert, convert_loop  # noqa: E402
from rnnserve.training.models import build_model  # noqa: E402

MAXLEN, VOCAB = 200, 10000


def session(proto) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = usable_cpus()
    return ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def ids(batch: int, length: int, width: int, rng) -> np.ndarray:
    """`length` tokens per row; pre-padded to `width` (Keras style) when width > length."""
    x = np.zeros((batch, width), dtype=np.int64)
    x[:, width - length:] = rng.integers(3, VOCAB, (batch, length))
    x[:, width - length] = 1
    return x


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=50)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    rows = []
    for cell in ("simple_rnn", "gru", "lstm"):
        for masked in (False, True):
            cfg = TrainConfig(cell=cell, maxlen=MAXLEN, embedding_dim=32, units=32, dense_units=32,
                              mask_zero=masked).validate()
            model = build_model(cfg, VOCAB, 2)
            model.set_weights([rng.normal(0, 0.3, w.shape).astype(np.float32) for w in model.get_weights()])
            exports = {"loop": session(convert_loop(model, MAXLEN)), "native": session(convert(model, MAXLEN))}
            lengths = (20, MAXLEN) if masked else (MAXLEN,)
            for length in lengths:
                for batch in (1, 64):
                    row = {"cell": cell, "masked": masked, "tokens": length, "batch": batch}
                    for name, sess in exports.items():
                        # The native masked export takes rows as the service sends them: tokens first,
                        # padded only to the longest row. The Loop export needs Keras's maxlen pre-padding.
                        if name == "native" and masked:
                            x = ids(batch, length, length, rng)
                        else:
                            x = ids(batch, length, MAXLEN, rng)
                        row[f"{name}_ms"] = median_ms(sess, x, args.repeat)
                    row["speed-up"] = row["loop_ms"] / row["native_ms"]
                    rows.append(row)
                    print(f"{cell:10} masked={masked!s:5} tokens={length:3} batch={batch:2}  "
                          f"loop {row['loop_ms']:8.3f} ms"
                          f"  native {row['native_ms']:8.3f} ms  x{row['speed-up']:.1f}", flush=True)
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / "rnn_ops.json").write_text(json.dumps({"machine": machine(), "repeat": args.repeat, "rows": rows},
                                                 indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
