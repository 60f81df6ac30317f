"""Word vectors learnt by the training module itself: skip-gram (gensim word2vec) on the token ids of the
texts a model trains on, so no text outside that split (validation, test, the internet) shapes them."""

from __future__ import annotations

import numpy as np

WINDOW = 5
EPOCHS = 5
MIN_COUNT = 2  # rarer ids keep the embedding's own random start


def skipgram_embeddings(sequences: list[list[int]], vocab_size: int, dim: int, seed: int) -> np.ndarray:
    """[vocab_size, dim] float32: row i is id i's skip-gram vector; ids word2vec did not learn and id 0
    (padding) keep Keras's small uniform start."""
    from gensim.models import Word2Vec

    sentences = [[str(i) for i in seq] for seq in sequences if seq]
    # One worker: word2vec with several threads is not reproducible run to run.
    w2v = Word2Vec(sentences, vector_size=dim, window=WINDOW, min_count=MIN_COUNT, sg=1, negative=5,
                   epochs=EPOCHS, workers=1, seed=seed)
    rng = np.random.default_rng(seed)
    matrix = rng.uniform(-0.05, 0.05, (vocab_size, dim)).astype(np.float32)
    ids = np.array([int(w) for w in w2v.wv.index_to_key], dtype=np.int64)
    vectors = w2v.wv.vectors
    keep = (ids > 0) & (ids < vocab_size)
    matrix[ids[keep]] = vectors[keep]
    return matrix
