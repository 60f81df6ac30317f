"""The text classifiers' accuracy against their cost: every package in the model directories (the bundled
ones, and e.g. INT8 copies made with `rnnserve-train quantize` in another directory), side by side in one run.

    python bench/models.py [--models-dir models] [--models-dir runs/int8] [--repeat 30] [--plot docs/models-front.png]

For each: parameters, validation and test accuracy, macro-F1 (from metadata; tests/test_bundled_models.py
recomputes the bundled ones), package size, and onnxruntime latency measured here at batch 1 and 64: at maxlen
(the worst case) and, for masked models, at the dataset's typical text length (the median token count of its
texts, from RNNSERVE_DATA_DIR), which is what the service pays (it pads a batch only to its longest text).
Students (rnnserve-train distill) are compared with their teacher. Prints Markdown tables, writes
bench/results/models.json and plots accuracy against batch-64 cost, one point per package.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import ROOT, machine, median_ms  # noqa: E402
from rnnserve.service.core.package import Task, read_package, scan_repository  # noqa: E402
from rnnserve.service.cpus import usable_cpus  # noqa: E402
from rnnserve.training.config import TUTORIAL_ACCURACY  # noqa: E402

# What each bundled model is compared with (issue targets; tutorial figures where one exists).
REFERENCE = {"imdb-lstm-ensemble": "target 89%", "imdb-gru-ensemble": "target 89%",
             "imdb-lstm-small": "88% (LSTM tutorial)", "imdb-simple-rnn": "85% (SimpleRNN tutorial)",
             "reuters-lstm-ensemble": "target 80%", "reuters-gru-ensemble": "target 80%",
             "reuters-simple-rnn": "74.96% (maxlen-50 subset)"}
TITLES = {"imdb": "IMDB (25,000 test reviews)", "reuters": "Reuters (2,246 test newswires)"}
CELLS = {"lstm": "LSTM", "gru": "GRU", "simple_rnn": "SimpleRNN"}
DATA_FILES = {"imdb": ("imdb_reconstructed.npz", ("x_train", "x_test")), "reuters": ("reuters.npz", ("x",))}


def typical_lengths(data_dir: Path | None) -> dict[str, int]:
    """The median token count (start token included) of each Keras dataset's texts; {} without the data."""
    out = {}
    for name, (filename, keys) in DATA_FILES.items():
        path = data_dir / filename if data_dir else None
        if path and path.is_file():
            with np.load(path, allow_pickle=True) as data:
                out[name] = int(np.median([len(x) + 1 for key in keys for x in data[key]]))
    return out


def architecture(meta) -> str:
    arch = meta.architecture
    members = f"{arch.get('ensemble', 1)} x " if arch.get("ensemble", 1) > 1 else ""
    masked = "masked " if arch.get("mask_zero") else ""
    int8 = " (INT8)" if meta.quantization else ""
    student = f", distilled from {meta.distillation['teacher']['name']}" if meta.distillation else ""
    cell = CELLS.get(arch.get("cell"), arch.get("cell"))
    return (f"{members}{masked}{'Bi' if arch.get('bidirectional') else ''}{cell}({arch.get('units')})"
            f"{' x' + str(arch['layers']) if arch.get('layers', 1) > 1 else ''}{int8}{student}")


def measure(path: Path, typical: dict[str, int], repeat: int, rng) -> dict | None:
    pkg = read_package(path)
    meta = pkg.metadata
    if pkg.task != Task.TEXT_CLASSIFICATION or "test" not in meta.metrics:
        return None
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = usable_cpus()
    session = ort.InferenceSession(str(path / "model.onnx"), opts, providers=["CPUExecutionProvider"])
    dataset = meta.dataset.get("name", "")
    length = min(pkg.maxlen, typical.get(dataset, pkg.maxlen)) if meta.dynamic_length else pkg.maxlen
    vocab = pkg.tokenizer.vocab_size

    def ms(batch: int, steps: int) -> float:
        return median_ms(session, rng.integers(1, vocab, (batch, steps)).astype(np.int64), repeat)

    worst = {b: ms(b, pkg.maxlen) for b in (1, 64)}
    usual = {b: ms(b, length) for b in (1, 64)} if length != pkg.maxlen else worst
    return {
        "model": pkg.name, "dataset": dataset, "architecture": architecture(meta),
        "params": meta.architecture.get("params"), "maxlen": pkg.maxlen, "typical_length": length,
        "accuracy": meta.metrics["test"]["accuracy"], "macro_f1": meta.metrics["test"]["macro_f1"],
        "validation": meta.metrics.get("validation", {}).get("accuracy"),
        "reference": REFERENCE.get(pkg.name, f"{TUTORIAL_ACCURACY[pkg.name]:.2%} (tutorial)"
                                   if pkg.name in TUTORIAL_ACCURACY else "-"),
        "train_seconds": meta.training.get("train_seconds"), "epochs": meta.training.get("epochs_run"),
        "package_mb": sum(f.stat().st_size for f in path.iterdir()) / 1e6,
        "onnx_mb": (path / "model.onnx").stat().st_size / 1e6, "int8": bool(meta.quantization),
        "teacher": meta.distillation.get("teacher", {}).get("name") if meta.distillation else None,
        "int8_of": meta.quantization.get("source", {}).get("name") if meta.quantization else None,
        "b1_ms": worst[1], "b64_ms": worst[64], "b1_typical_ms": usual[1], "b64_typical_ms": usual[64],
    }


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, NullFormatter, ScalarFormatter

    styles = {"ensemble": ("s", "tab:red"), "distilled": ("*", "tab:green"), "INT8": ("^", "tab:purple"),
              "single model": ("o", "tab:blue")}
    datasets = sorted({r["dataset"] for r in rows})
    fig, axes = plt.subplots(1, len(datasets), figsize=(7.5 * len(datasets), 5.5))
    for ax, dataset in zip(np.atleast_1d(axes), datasets):
        points = [r for r in rows if r["dataset"] == dataset]
        for r in points:
            kind = "INT8" if r["int8"] else "distilled" if r["teacher"] else \
                "ensemble" if " x " in r["architecture"] else "single model"
            x, y = r["b64_typical_ms"], r["accuracy"] * 100
            ax.scatter(x, y, marker=styles[kind][0], color=styles[kind][1], s=110, label=kind, zorder=3)
            # INT8 copies sit beside their float package: their names go below the point, the others' above
            ax.annotate(r["model"], (x, y), fontsize=8, textcoords="offset points",
                        xytext=(-10, -14) if kind == "INT8" else (6, 5))
        xs = [r["b64_typical_ms"] for r in points]
        ax.set_xscale("log")
        ax.set_xlim(min(xs) / 1.5, max(xs) * 2.2)
        ax.xaxis.set_major_locator(FixedLocator([1, 2, 5, 10, 20, 50, 100, 200, 500]))
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set(title=f"{TITLES.get(dataset, dataset)}: test accuracy against onnxruntime cost",
               xlabel="ms per batch of 64 texts of typical length (log scale, 2-core CPU)",
               ylabel="test accuracy (%)")
        handles, labels = ax.get_legend_handles_labels()
        unique = dict(zip(labels, handles))
        ax.legend(unique.values(), unique.keys(), loc="best", fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models-dir", action="append", help="a model directory (repeatable; default models/)")
    ap.add_argument("--data-dir", default=os.environ.get("RNNSERVE_DATA_DIR"),
                    help="the Keras datasets, for the typical text length (default $RNNSERVE_DATA_DIR)")
    ap.add_argument("--repeat", type=int, default=30)
    ap.add_argument("--plot", default=str(ROOT / "docs" / "models-front.png"), help="the plot's file ('' for none)")
    args = ap.parse_args()
    typical = typical_lengths(Path(args.data_dir) if args.data_dir else None)
    rng = np.random.default_rng(0)
    rows = [row for d in (args.models_dir or [str(ROOT / "models")]) for path in scan_repository(Path(d))
            if (row := measure(path, typical, args.repeat, rng))]
    rows.sort(key=lambda r: (r["dataset"], -r["accuracy"]))
    print(f"Measured on {machine()}; typical lengths (median tokens): {typical or 'no data directory: maxlen'}\n")
    print("| model | architecture | params | validation | test accuracy | macro-F1 | compare with | package (onnx) "
          "| ORT batch 1 | ORT batch 64 | batch 64, typical length |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        val = "n/a" if r["validation"] is None else f"{r['validation']:.2%}"
        typical_cell = (f"{r['b64_typical_ms']:.1f} ms ({r['typical_length']} steps)"
                        if r["typical_length"] != r["maxlen"] else "(not masked: as maxlen)")
        print(f"| {r['model']} | {r['architecture']}, maxlen {r['maxlen']} | {r['params'] or 0:,} | {val} "
              f"| {r['accuracy']:.2%} | {r['macro_f1']:.4f} | {r['reference']} "
              f"| {r['package_mb']:.1f} MB ({r['onnx_mb']:.1f}) | {r['b1_ms']:.2f} ms | {r['b64_ms']:.1f} ms "
              f"| {typical_cell} |")
    by_name = {r["model"]: r for r in rows}
    pairs = [(r, by_name[r["teacher"]], "teacher") for r in rows if r["teacher"] in by_name]
    pairs += [(r, by_name[r["int8_of"]], "float package") for r in rows if r["int8_of"] in by_name]
    if pairs:
        print("\n| package | against | test accuracy | change | batch 64 at maxlen | at typical length |")
        print("|---|---|---|---|---|---|")
        for r, other, what in pairs:
            print(f"| {r['model']} | its {what} {other['model']} | {r['accuracy']:.2%} vs {other['accuracy']:.2%} "
                  f"| {(r['accuracy'] - other['accuracy']) * 100:+.2f} pt "
                  f"| {r['b64_ms']:.1f} vs {other['b64_ms']:.1f} ms: {other['b64_ms'] / r['b64_ms']:.2f}x faster "
                  f"| {r['b64_typical_ms']:.1f} vs {other['b64_typical_ms']:.1f} ms: "
                  f"{other['b64_typical_ms'] / r['b64_typical_ms']:.2f}x faster |")
    (ROOT / "bench" / "results").mkdir(exist_ok=True)
    (ROOT / "bench" / "results" / "models.json").write_text(json.dumps(
        {"machine": machine(), "typical_lengths": typical, "rows": rows}, indent=2))
    if args.plot:
        plot(rows, Path(args.plot))
        print(f"\nwrote {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
