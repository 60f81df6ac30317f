"""Skip-gram embeddings: learnt from the ids given, reproducible across processes (hash seeds included)."""

import os
import subprocess
import sys

import numpy as np

from tests.conftest import ROOT

SCRIPT = """
import hashlib, numpy as np
from rnnserve.training.embeddings import skipgram_embeddings
rng = np.random.default_rng(0)
seqs = [[int(i) for i in rng.integers(4, 60, 40)] + [1, 2, 3] * 5 for _ in range(200)]
m = skipgram_embeddings(seqs, 80, 8, seed=7)
print(hashlib.sha256(m.tobytes()).hexdigest(), m.shape, float(np.abs(m[60:]).max()))
"""


def test_same_seed_same_vectors_in_any_process():
    outs = [subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, capture_output=True, text=True, timeout=120,
                           env={**os.environ, "PYTHONHASHSEED": seed}).stdout for seed in ("1", "2")]
    assert outs[0] == outs[1] and "(80, 8)" in outs[0]
    assert float(outs[0].split()[-1]) <= 0.05  # ids never seen keep Keras's small uniform start


def test_ids_seen_together_end_up_close():
    from rnnserve.training.embeddings import skipgram_embeddings

    rng = np.random.default_rng(1)
    # ids 4 and 5 appear among the words 10-19, id 6 among the words 20-29: 4 and 5 share their contexts
    seqs = []
    for i in range(3000):
        word, context = [(4, 10), (5, 10), (6, 20)][i % 3]
        seq = [int(c) for c in rng.integers(context, context + 10, 8)]
        seq.insert(4, word)
        seqs.append(seq)
    m = skipgram_embeddings(seqs, 50, 16, seed=3)
    cos = lambda a, b: float(m[a] @ m[b] / np.linalg.norm(m[a]) / np.linalg.norm(m[b]))  # noqa: E731
    assert cos(4, 5) > cos(4, 6) + 0.3
