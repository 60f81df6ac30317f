"""Character language models: a corpus, cut into windows of `maxlen` characters, each step predicting the
next character (Keras: Embedding, RNN layers returning sequences, a softmax over the characters).

The corpus is a .txt file (read whole), a CSV/JSONL file whose `text_column` values are joined by newlines, or
`reuters-text`: the raw Reuters training text of the data directory.
Its first (1 - test_split) share trains (the end of that share validates, as validation_split says); the rest
is the test text. The tokenizer is Keras's char_level one, case kept, id 1 for characters never seen.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np

from rnnserve.service.core.rows import format_of, read_file
from rnnserve.service.core.tokenizer import Tokenizer, TokenizerSpec, build_vocabulary
from rnnserve.training.config import TrainConfig
from rnnserve.training.data import DataError, resolve_data_dir

REUTERS_TEXT = ("reuters-text", "raw/reuters_train_raw.csv.gz")  # the raw Reuters training text, in a data dir


def read_corpus(path: str | Path, text_column: str = "text", data_dir=None) -> str:
    if str(path) == REUTERS_TEXT[0]:
        root = resolve_data_dir(data_dir)
        if root is None:
            raise DataError("dataset 'reuters-text' is the raw Reuters training text of a data directory: pass "
                            "--data-dir (or set RNNSERVE_DATA_DIR)")
        path, text_column = root / REUTERS_TEXT[1], "text"
    path = Path(path)
    if not path.is_file():
        raise DataError(f"file {path} does not exist")
    fmt = format_of(path.name) or "csv"
    try:
        lines = []
        for row in read_file(path, fmt, text_column):  # one reader for every file (byte-order marks, line endings)
            if row.error is not None:
                raise DataError(f"{path}: row {row.number}: {row.error}")
            lines.append(row.text)
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"cannot read {path}: {exc}") from exc
    return "\n".join(lines)


def char_spec(train_text: str, cfg: TrainConfig) -> TokenizerSpec:
    template = TokenizerSpec(words=[], char_level=True, lower=False, start_char=None, oov_char=1, index_from=1,
                             unknown_words="oov", num_words=cfg.num_words, maxlen=cfg.maxlen, padding="pre",
                             truncating="pre")
    template.words = build_vocabulary([train_text], template)
    every = len(template.words) + template.index_from + 1  # ids 0 (unused), 1 (unseen), then the characters
    template.num_words = min(cfg.num_words or every, every)  # the softmax covers just the characters kept
    return template


def windows(ids: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray]:
    """Non-overlapping windows: x = ids[i:i + length], y = the next character at each step."""
    n = (len(ids) - 1) // length
    if n < 1:
        raise DataError(f"the text has {len(ids)} characters, too few for one window of {length}")
    x = ids[: n * length].reshape(n, length)
    y = ids[1: n * length + 1].reshape(n, length)
    return x, y


def lm_metrics(y: np.ndarray, probs: np.ndarray) -> dict:
    """Next-character accuracy and bits per character."""
    p = np.take_along_axis(probs, y[..., None], axis=-1)[..., 0]
    return {"accuracy": float((probs.argmax(-1) == y).mean()),
            "bits_per_char": float(-np.log2(np.maximum(p, 1e-12)).mean()), "examples": int(y.size)}


def prepare_lm(cfg: TrainConfig, data_dir=None):
    from rnnserve.training.models import build_lm, predict_proba
    from rnnserve.training.train import Prepared

    text = read_corpus(cfg.dataset, cfg.text_column, data_dir)
    if cfg.max_chars:
        text = text[: cfg.max_chars]
    cut = int(len(text) * (1 - cfg.test_split))
    spec = char_spec(text[:cut], cfg)
    tok = Tokenizer(spec)
    encode = lambda t: np.array(tok.encode(t)[0], np.int64)  # noqa: E731
    x_train, y_train = windows(encode(text[:cut]), cfg.maxlen)
    x_test, y_test = windows(encode(text[cut:]), cfg.maxlen)
    return Prepared(x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test,
                    build=lambda steps, emb: build_lm(cfg, spec.vocab_size, steps), labels=None,
                    predict=predict_proba, score=lm_metrics, files={"tokenizer.json": spec.to_json()},
                    vocab_size=spec.vocab_size)
