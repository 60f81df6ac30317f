"""What the tokenizer's normalization (service/core/normalize.py) does to the bundled classifiers: how many raw
IMDB and Reuters training texts it changes (their characters, and their ids under each package's tokenizer),
and each package's validation accuracy on the raw validation texts with and without it.

    python bench/normalization.py [--models-dir models] [--rules quotes,dashes,nfkc,spaces]

The validation texts are the ones each package's training held out (Keras's validation_split: the last
fraction of the training split, in load_data's order), as raw text; the packages were trained on Keras's ids.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import DATA_DIR, ROOT, machine  # noqa: E402
from rnnserve.service.core.normalize import DEFAULT, normalizer  # noqa: E402
from rnnserve.service.core.package import read_package, scan_repository  # noqa: E402
from rnnserve.service.core.tokenizer import Tokenizer  # noqa: E402
from rnnserve.training.data import imdb_raw_train_in_keras_order, reuters_raw_train  # noqa: E402
from rnnserve.training.evaluate import onnx_predict  # noqa: E402


def raw_train(dataset: str) -> tuple[list[str], np.ndarray]:
    """Raw training texts and labels in the order of load_data's x_train (IMDB: its seed-113 shuffle)."""
    if dataset == "reuters":
        return reuters_raw_train(DATA_DIR)
    texts, labels = imdb_raw_train_in_keras_order(DATA_DIR)
    idx = np.arange(len(texts))
    np.random.RandomState(113).shuffle(idx)
    return [texts[i] for i in idx], labels[idx]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models-dir", type=Path, default=ROOT / "models")
    ap.add_argument("--rules", default=",".join(DEFAULT))
    args = ap.parse_args()
    rules = args.rules.split(",")
    normalize = normalizer(rules)
    print(f"{machine()}; rules {rules}\n")
    data = {name: raw_train(name) for name in ("imdb", "reuters")}
    for name, (texts, _) in data.items():
        changed = sum(normalize(t)[0] != t for t in texts)
        print(f"{name}: {changed:,} of {len(texts):,} raw training texts change ({changed / len(texts):.2%})")
    print("\n| package | texts whose ids change | validation texts | accuracy without | accuracy with | change |")
    print("|---|--:|--:|--:|--:|--:|")
    for path in scan_repository(args.models_dir):
        pkg = read_package(path)
        dataset = pkg.metadata.training.get("dataset")
        if dataset not in data or pkg.metadata.task != "text-classification":
            continue
        texts, labels = data[dataset]
        plain = Tokenizer(dataclasses.replace(pkg.tokenizer, normalization=[]))
        norm = Tokenizer(dataclasses.replace(pkg.tokenizer, normalization=rules))
        ids_changed = sum(plain.encode(t)[0] != norm.encode(t)[0] for t in texts)
        held_out = int(len(texts) * (1 - pkg.metadata.training["validation_split"]))
        val_texts, val_labels = texts[held_out:], labels[held_out:]
        accuracy = [float((onnx_predict(path, tok(val_texts)[0]).argmax(1) == val_labels).mean())
                    for tok in (plain, norm)]
        print(f"| {pkg.metadata.name} | {ids_changed:,} ({ids_changed / len(texts):.2%}) | {len(val_texts):,} | "
              f"{accuracy[0]:.2%} | {accuracy[1]:.2%} | {(accuracy[1] - accuracy[0]) * 100:+.2f} pt |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
