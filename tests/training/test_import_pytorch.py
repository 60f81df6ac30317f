"""PyTorch notebooks through `rnnserve-train import`, with real torch and both of its exporters: the worked
notebook of docs/own-model.md run as written, and a notebook with its own ids (a {token: id} JSON vocabulary
with padding id 1, start and end ids, punctuation to spaces, a regular-expression tokenizer) and a lengths
input. Served predictions equal the notebook's model's on raw reviews (labels identical, |dp| <= 1e-5)."""

from __future__ import annotations

import json
import re
import shlex
import string

import numpy as np
import onnx
import pytest
from onnx import helper

from rnnserve.service.core.package import read_package
from rnnserve.training.cli import main
from tests.training import notebooks
from tests.training.test_import import run_import, served, texts_file
from tests.training.test_import_safety import tiny_onnx
from tests.training.test_import_tokenizers import word_level_tokenizer

torch = pytest.importorskip("torch")


def softmax(z) -> np.ndarray:
    return torch.softmax(torch.as_tensor(z, dtype=torch.float64), 1).numpy()


def assert_served_like(models, name, texts, expected) -> None:
    p, _ = served(models, name, texts, expected.shape[1])
    assert (p.argmax(1) == expected.argmax(1)).all()
    assert np.abs(p - expected).max() <= 1e-5


def test_the_worked_pytorch_notebook_runs_as_written(tmp_path, data_dir, capsys, monkeypatch):
    train_texts, train_labels, held_out = notebooks._own_data_texts(data_dir)
    notebooks.write_reviews(tmp_path / "reviews.csv", train_texts, train_labels)
    monkeypatch.chdir(tmp_path)
    blocks = notebooks.doc_blocks("A worked PyTorch notebook")
    namespace: dict = {}
    exec(compile(blocks["python"][0], "own-model.md", "exec"), namespace)  # noqa: S102 - the page's own code
    commands = blocks["sh"][0].replace("\\\n", " ").splitlines()
    (command,) = [line for line in commands if line.startswith("rnnserve-train ")]
    code = main(shlex.split(command)[1:])
    out = capsys.readouterr()
    assert code == 0, out.out + out.err
    package = read_package(tmp_path / "models" / "reviews-torch" / "1")
    assert json.loads(package.read("profile.json"))["source"].endswith("of the import's parity texts")
    meta = read_package(tmp_path / "models" / "reviews-torch" / "1").metadata
    assert meta.parity["ids_compared"] and meta.parity["outputs_compared"] and meta.parity["examples"] == 300
    model, encode = namespace["model"], namespace["encode"]
    with torch.no_grad():
        expected = softmax(model(torch.tensor([encode(text) for text in held_out])))
    assert_served_like(tmp_path / "models", "reviews-torch", held_out, expected)


class OwnIds(torch.nn.Module):
    """Embedding -> GRU over every step -> the output at each text's last id (its length - 1) -> Linear."""

    def __init__(self, rows: int):
        super().__init__()
        self.embedding = torch.nn.Embedding(rows, 8, padding_idx=1)
        self.gru = torch.nn.GRU(8, 8, batch_first=True)
        self.fc = torch.nn.Linear(8, 3)

    def forward(self, input_ids, lengths):
        out, _ = self.gru(self.embedding(input_ids))
        return self.fc(out[torch.arange(input_ids.shape[0]), lengths - 1])


@pytest.mark.parametrize("dynamo", [True, False], ids=["dynamo", "torchscript"])
def test_a_notebook_with_its_own_ids_and_a_lengths_input(tmp_path, data_dir, capsys, dynamo):
    train_texts, _, held_out = notebooks._own_data_texts(data_dir)
    maxlen = 64
    punctuation_to_space = str.maketrans(string.punctuation, " " * len(string.punctuation))

    def tokenize(text):
        return re.findall(r"\w+", text.lower().translate(punctuation_to_space))

    vocab = {"<unk>": 0, "<pad>": 1, "<bos>": 2, "<eos>": 3}  # torchtext's order: the padding is id 1
    for token in sorted({t for text in train_texts for t in tokenize(text)})[:1500]:
        vocab[token] = len(vocab)
    (tmp_path / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")

    def encode(texts):
        rows = [([2] + [vocab.get(t, 0) for t in tokenize(text)] + [3])[:maxlen] for text in texts]
        lengths = torch.tensor([len(row) for row in rows])
        return torch.tensor([row + [1] * (maxlen - len(row)) for row in rows]), lengths

    torch.manual_seed(0)
    model = OwnIds(len(vocab)).eval()
    example = encode(train_texts[:2])
    path = tmp_path / "model.onnx"
    if dynamo:
        batch = torch.export.Dim("batch")
        torch.onnx.export(model, example, str(path), input_names=["input_ids", "lengths"], output_names=["logits"],
                          dynamic_shapes={"input_ids": {0: batch}, "lengths": {0: batch}})
    else:
        torch.onnx.export(model, example, str(path), dynamo=False, input_names=["input_ids", "lengths"],
                          output_names=["logits"], dynamic_axes={"input_ids": {0: "batch"}, "lengths": {0: "batch"},
                                                                 "logits": {0: "batch"}})
    gate_texts = train_texts[:200]
    ids, lengths = encode(gate_texts)
    with torch.no_grad():
        np.savez(tmp_path / "reference.npz", ids=ids.numpy(), outputs=model(ids, lengths).numpy())
    code, out = run_import(capsys, path, tmp_path / "models", "own-ids", "--vocab", tmp_path / "vocab.json",
                           "--unknown-token", "<unk>", "--pad-token", "<pad>", "--start-token", "<bos>",
                           "--end-token", "<eos>", "--punctuation", "space", "--token-pattern", r"\w+",
                           "--maxlen", maxlen, "--padding", "post", "--truncating", "post", "--output", "logits",
                           "--labels", "a,b,c", "--parity-texts", texts_file(tmp_path, gate_texts),
                           "--reference", tmp_path / "reference.npz", "--allow-unused-rows")
    assert code == 0, out
    spec = read_package(tmp_path / "models" / "own-ids" / "1").tokenizer
    assert spec.pad_id == 1 and spec.start_char == 2 and spec.end_char == 3 and spec.token_pattern == r"\w+"
    with torch.no_grad():
        expected = softmax(model(*encode(held_out)))
    assert_served_like(tmp_path / "models", "own-ids", held_out, expected)


def test_vocabulary_files_are_read_or_refused_with_the_reason(tmp_path, capsys):
    (tmp_path / "list.json").write_text('["<pad>", "a"]')
    onnx.save(tiny_onnx([helper.make_node("Identity", ["mean"], ["logits"])], []), tmp_path / "model.onnx")
    for vocab, reason in [("list.json", "expected a JSON object of tokens to ids"),
                          ("missing.json", "cannot read --vocab")]:
        code, out = run_import(capsys, tmp_path / "model.onnx", tmp_path / "models", "x", "--vocab",
                               tmp_path / vocab, "--maxlen", 5, "--accept-unchecked", "--parity-texts",
                               texts_file(tmp_path, ["a"]))
        assert code == 2 and reason in out, out


def test_a_hugging_face_word_level_tokenizer(tmp_path, data_dir, capsys):
    train_texts, _, held_out = notebooks._own_data_texts(data_dir)
    tok = word_level_tokenizer(train_texts)
    tok.save(str(tmp_path / "tokenizer.json"))

    def encode(texts):  # the notebook cuts what the tokenizer pads no further
        return torch.tensor([e.ids[:48] for e in tok.encode_batch(texts)])

    torch.manual_seed(0)
    model = OwnIds(tok.get_vocab_size()).eval()

    class IdsOnly(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = model

        def forward(self, input_ids):
            return self.inner(input_ids, (input_ids != 0).sum(1))

    net = IdsOnly().eval()
    torch.onnx.export(net, (encode(train_texts[:2]),), str(tmp_path / "model.onnx"), input_names=["input_ids"],
                      output_names=["logits"], dynamic_shapes={"input_ids": {0: torch.export.Dim("batch")}})
    gate_texts = [*train_texts[:150], "[CLS] the [PAD]film[SEP]", "ΟΔΟΣ Σ İstanbul \u2028 a\u3000b"]
    with torch.no_grad():
        np.savez(tmp_path / "reference.npz", ids=encode(gate_texts).numpy(), outputs=net(encode(gate_texts)).numpy())
    code, out = run_import(capsys, tmp_path / "model.onnx", tmp_path / "models", "hf", "--hf-tokenizer",
                           tmp_path / "tokenizer.json", "--truncating", "post", "--output", "logits", "--labels",
                           "a,b,c", "--parity-texts", texts_file(tmp_path, gate_texts), "--reference",
                           tmp_path / "reference.npz")
    assert code == 0, out
    package = read_package(tmp_path / "models" / "hf" / "1")
    assert package.metadata.source["preprocessing"]["kind"] == "hf-tokenizers"
    assert package.tokenizer.special_tokens and package.tokenizer.lower_per_character
    with torch.no_grad():
        expected = softmax(net(encode(held_out)))
    assert_served_like(tmp_path / "models", "hf", held_out, expected)


def test_hugging_face_tokenizers_that_cannot_be_matched_are_refused(tmp_path, capsys):
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers import normalizers, pre_tokenizers

    onnx.save(tiny_onnx([helper.make_node("Identity", ["mean"], ["logits"])], []), tmp_path / "model.onnx")
    word_piece = tokenizers.Tokenizer(tokenizers.models.WordPiece({"[UNK]": 0, "a": 1, "##b": 2}, unk_token="[UNK]"))
    whitespace = word_level_tokenizer(["a b c"])
    whitespace.pre_tokenizer = pre_tokenizers.Whitespace()
    bert = word_level_tokenizer(["a b c"])
    bert.normalizer = normalizers.BertNormalizer()
    for tok, reason in [(word_piece, "a WordPiece tokenizer splits each word into the longest pieces"),
                        (whitespace, "pre-tokenizer Whitespace: its \\w and \\s are Rust regex's Unicode classes"),
                        (bert, "normalizer BertNormalizer: supported: none or Lowercase")]:
        tok.save(str(tmp_path / "tokenizer.json"))
        code, out = run_import(capsys, tmp_path / "model.onnx", tmp_path / "models", "x", "--hf-tokenizer",
                               tmp_path / "tokenizer.json", "--maxlen", 5, "--accept-unchecked", "--parity-texts",
                               texts_file(tmp_path, ["a"]))
        assert code == 2 and reason in out, out
