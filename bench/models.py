"""The bundled text classifiers' table: parameters, validation and test accuracy, macro-F1 (from metadata,
recomputed by the tests), training time, package size, and onnxruntime latency at batch 1 and 64 measured here.

    python bench/models.py [--models-dir models] [--repeat 30]

Prints a Markdown table and writes bench/results/models.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import ROOT, machine, median_ms  # noqa: E402
from rnnserve.service.core.package import read_package, scan_repository  # noqa: E402
from rnnserve.service.cpus import usable_cpus  # noqa: E402
from rnnserve.training.config import TUTORIAL_ACCURACY  # noqa: E402

# What each bundled model is compared with (issue targets; tutorial figures where one exists).
REFERENCE = {"imdb-lstm": "target 89%", "imdb-gru": "target 89%", "imdb-lstm-small": "88% (LSTM tutorial)",
             "imdb-simple-rnn": "85% (SimpleRNN tutorial)", "reuters-lstm": "target 80%", "reuters-gru": "target 80%",
             "reuters-simple-rnn": "74.96% (maxlen-50 subset)"}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models-dir", default=str(ROOT / "models"))
    ap.add_argument("--repeat", type=int, default=30)
    args = ap.parse_args()
    rows = []
    rng = np.random.default_rng(0)
    for path in scan_repository(Path(args.models_dir)):
        pkg = read_package(path)
        meta = pkg.metadata
        if pkg.task != "text-classification":
            continue
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = usable_cpus()
        session = ort.InferenceSession(str(path / "model.onnx"), opts, providers=["CPUExecutionProvider"])
        vocab = pkg.tokenizer.vocab_size
        lat = {b: median_ms(session, rng.integers(1, vocab, (b, pkg.maxlen)).astype(np.int64), args.repeat)
               for b in (1, 64)}
        test = meta.metrics["test"]
        arch = meta.architecture
        rows.append({
            "model": pkg.name, "cell": arch["cell"], "layers": arch["layers"], "bidirectional": arch["bidirectional"],
            "pooling": meta.training.get("pooling", "last"), "params": arch["params"], "maxlen": pkg.maxlen,
            "accuracy": test["accuracy"], "macro_f1": test["macro_f1"], "ensemble": arch.get("ensemble", 1),
            "validation": meta.metrics.get("validation", {}).get("accuracy"),
            "reference": REFERENCE.get(pkg.name, f"{TUTORIAL_ACCURACY[pkg.name]:.2%} (tutorial)"
                                       if pkg.name in TUTORIAL_ACCURACY else "-"),
            "train_seconds": meta.training["train_seconds"], "epochs": meta.training["epochs_run"],
            "package_mb": sum(f.stat().st_size for f in path.iterdir()) / 1e6,
            "onnx_mb": (path / "model.onnx").stat().st_size / 1e6,
            "latency_b1_ms": lat[1], "latency_b64_ms": lat[64],
        })
    print(f"Measured on {machine()}\n")
    print("| model | architecture | params | validation accuracy | test accuracy | macro-F1 | compare with "
          "| train time | package (onnx) | ORT batch 1 | ORT batch 64 |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        members = f"{r['ensemble']} x " if r["ensemble"] > 1 else ""
        arch = (f"{members}{'Bi' if r['bidirectional'] else ''}{r['cell']} x{r['layers']}, {r['pooling']} pooling, "
                f"maxlen {r['maxlen']}")
        val = "n/a" if r["validation"] is None else f"{r['validation']:.2%}"
        print(f"| {r['model']} | {arch} | {r['params']:,} | {val} | {r['accuracy']:.2%} | {r['macro_f1']:.4f} "
              f"| {r['reference']} | {r['train_seconds']:.0f} s ({r['epochs']} epochs) "
              f"| {r['package_mb']:.1f} MB ({r['onnx_mb']:.1f}) | {r['latency_b1_ms']:.2f} ms "
              f"| {r['latency_b64_ms']:.1f} ms |")
    print(f"\nall packages: {sum(r['package_mb'] for r in rows):.1f} MB")
    (ROOT / "bench" / "results").mkdir(exist_ok=True)
    (ROOT / "bench" / "results" / "models.json").write_text(json.dumps({"machine": machine(), "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
