"""Imported packages against one trained here, side by side in one run: same architecture, same server, same
reviews. The bundled `imdb-lstm-tutorial` (trained and exported here) and the IMDB tutorial's notebook model
of the same shape (Embedding(10000, 32) -> LSTM(32) -> Dense(32, relu) -> Dense(1, sigmoid), maxlen 200; Keras
3, one epoch on 1,000 reviews: its weights do not change the cost) imported three ways: with the dataset's
vocabulary, with a tf-keras Tokenizer JSON, and with a TextVectorization saved beside it.

    python bench/imported.py [--duration 10] [--data-dir ../shared/data]

Needs the [train] extra and `wrk`. Prints req/s and texts/s for single-text requests at c=1, 16, 64 and
64-text batches, each with its ratio to the package trained here and the tokenizer each uses, the import's
wall time, and writes bench/results/imported.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import ROOT, free_port, machine, reviews, start_server, stop_server  # noqa: E402
from bench.load import scenarios  # noqa: E402

TRAINED = "imdb-lstm-tutorial"


def notebook_models(folder: Path, data_dir: Path) -> dict[str, list[str]]:
    """Train the three notebooks; returns each import's command-line arguments after the model path."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras
    import numpy as np
    from tf_keras.preprocessing.text import Tokenizer

    from rnnserve.training.data import load_keras_dataset

    def fit_and_save(x, y, path: Path, vocab: int):
        keras.utils.set_random_seed(1)
        model = keras.Sequential([keras.layers.Embedding(vocab, 32), keras.layers.LSTM(32),
                                  keras.layers.Dense(32, activation="relu"),
                                  keras.layers.Dense(1, activation="sigmoid")])
        model.compile("adam", "binary_crossentropy")
        model.fit(x, y, epochs=1, batch_size=64, verbose=0)
        model.save(path)

    ds = load_keras_dataset("imdb", data_dir, num_words=10000)
    fit_and_save(keras.utils.pad_sequences(ds.x_train[:1000], maxlen=200), ds.y_train[:1000], folder / "dataset.keras",
                 10000)
    texts = reviews(1000)
    labels = np.arange(len(texts)) % 2  # the cost does not depend on what it learnt
    (folder / "texts.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts[:300]))
    tokenizer = Tokenizer(num_words=10000, oov_token="<OOV>")
    tokenizer.fit_on_texts(texts)
    (folder / "tokenizer.json").write_text(tokenizer.to_json())
    x = keras.utils.pad_sequences(tokenizer.texts_to_sequences(texts), maxlen=200)
    fit_and_save(x, labels, folder / "tokenizer.keras", 10000)
    vectorizer = keras.layers.TextVectorization(max_tokens=10000, output_sequence_length=200)
    vectorizer.adapt(texts)
    (folder / "vectorizer.json").write_text(json.dumps(
        {"config": {k: v for k, v in vectorizer.get_config().items() if k != "dtype"},
         "vocabulary": [str(w) for w in vectorizer.get_vocabulary()]}))
    fit_and_save(vectorizer(texts).numpy(), labels, folder / "vectorizer.keras", 10000)
    parity = ["--parity-texts", str(folder / "texts.jsonl"), "--labels", "negative,positive"]
    return {
        "imported, dataset vocabulary": [str(folder / "dataset.keras"), "--vocabulary", "imdb", "--num-words", "10000",
                                         "--maxlen", "200", "--data-dir", str(data_dir), "--parity-examples", "300"],
        "imported, Tokenizer JSON": [str(folder / "tokenizer.keras"), "--tokenizer-json",
                                     str(folder / "tokenizer.json"), "--maxlen", "200", *parity],
        "imported, TextVectorization": [str(folder / "vectorizer.keras"), "--text-vectorization",
                                        str(folder / "vectorizer.json"), *parity],
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=int, default=10, help="seconds per scenario")
    ap.add_argument("--data-dir", default=os.environ.get("RNNSERVE_DATA_DIR", str(ROOT.parent / "shared" / "data")))
    args = ap.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk is not installed (apt-get install wrk)")
    from rnnserve.service.core.package import read_package
    from rnnserve.service.core.tokenizer import Tokenizer
    from rnnserve.training.cli import main as train_main

    texts = [t for t in reviews(2000) if 800 <= len(t) <= 1000][:50]
    report = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "machine": machine(),
              "duration_s": args.duration, "results": {}}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        models = tmp / "models"
        shutil.copytree(ROOT / "models" / TRAINED, models / TRAINED)
        names = {f"trained here ({TRAINED})": TRAINED}
        imports = {}
        for i, (label, flags) in enumerate(notebook_models(tmp, Path(args.data_dir)).items()):
            name = f"imported-{i}"
            start = time.monotonic()
            if train_main(["import", *flags[:1], "--name", name, "--models-dir", str(models), *flags[1:]]):
                sys.exit(f"import failed: {label}")
            imports[name] = round(time.monotonic() - start, 1)
            names[label] = name
        port = free_port()
        proc = start_server([sys.executable, "-m", "rnnserve.service", "--models-dir", str(models), "--no-access-log",
                             "--log-level", "warning", "--port", str(port)], port)
        try:
            for label, name in names.items():
                tokenizer = Tokenizer(read_package(max((models / name).iterdir())).tokenizer).implementation
                rows = scenarios(f"http://127.0.0.1:{port}/v1/models/{name}/predict", args.duration, tmp, texts, True)
                report["results"][label] = {"tokenizer": tokenizer, "import_s": imports.get(name), "rows": rows}
        finally:
            stop_server(proc)
    base = {r["scenario"]: r["requests_per_s"] for r in report["results"][f"trained here ({TRAINED})"]["rows"]}
    print(f"{report['machine']}, {args.duration}s per scenario, one server")
    print(f"{'package':34} {'tokenizer':9} {'scenario':22} {'req/s':>8} {'texts/s':>8} {'p50 ms':>7} {'p99 ms':>7} "
          f"{'vs trained':>10}")
    for label, result in report["results"].items():
        for r in result["rows"]:
            r["vs_trained_here"] = r["requests_per_s"] / base[r["scenario"]]
            print(f"{label:34} {result['tokenizer']:9} {r['scenario']:22} {r['requests_per_s']:8.0f} "
                  f"{r.get('texts_per_s', r['requests_per_s']):8.0f} {r['p50_ms']:7.2f} {r['p99_ms']:7.2f} "
                  f"{r['vs_trained_here']:9.2f}x")
    print("import wall time (s):", {label: r["import_s"] for label, r in report["results"].items() if r["import_s"]})
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / "imported.json").write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
