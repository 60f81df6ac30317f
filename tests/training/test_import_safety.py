"""An import never runs what it imports, and reads every file within a stated bound (issue 34, item 1).

Real files made by the libraries themselves: a Lambda whose function writes a marker file, saved by tf-keras
as `.h5` and SavedModel and by Keras 3 as `.keras`; custom functions and classes; Keras 3's model.export();
a `.keras` archive padded to 300 MB; ONNX files with a custom-domain operator, external data outside their
folder, and real torch.onnx.export output with its weights in model.onnx.data."""

from __future__ import annotations

import json
import tracemalloc
import zipfile

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from rnnserve.service.core.package import read_package
from rnnserve.training.untrusted import MAX_CONFIG_BYTES, size_text
from tests.training.test_import import run_import, texts_file

keras = pytest.importorskip("keras")
tf_keras = pytest.importorskip("tf_keras")

MARKER = "PWNED"


@pytest.fixture()
def lambda_files(tmp_path, monkeypatch):
    """The same chain, Embedding -> Lambda -> LSTM -> Dense, saved three ways; building it ran the Lambda, so the
    marker is removed before the import runs."""
    monkeypatch.chdir(tmp_path)
    tf_keras.backend.clear_session()  # layer names start afresh: "lambda", not "lambda_1"
    keras.backend.clear_session()
    run = lambda x: (open(MARKER, "a").write("ran\n"), x)[1]  # noqa: E731 - a lambda is what tf-keras marshals
    # The Lambda named: Keras numbers default names per process, and the refusal names the layer.
    old = tf_keras.Sequential([tf_keras.layers.Embedding(10, 4, input_length=5),
                               tf_keras.layers.Lambda(run, name="lambda"), tf_keras.layers.LSTM(3),
                               tf_keras.layers.Dense(1, activation="sigmoid")])
    old.build((None, 5))
    old.save(tmp_path / "lambda.h5")
    old.save(tmp_path / "lambda_savedmodel", save_format="tf")
    new = keras.Sequential([keras.Input((5,), dtype="int32"), keras.layers.Embedding(10, 4),
                            keras.layers.Lambda(run, name="lambda"), keras.layers.LSTM(3),
                            keras.layers.Dense(1, activation="sigmoid")])
    new.save(tmp_path / "lambda.keras")
    assert (tmp_path / MARKER).exists()  # the payload works
    (tmp_path / MARKER).unlink()
    return tmp_path


def preprocessing_flags(tmp_path) -> list:
    tokenizer = tf_keras.preprocessing.text.Tokenizer()
    tokenizer.fit_on_texts(["a b c d e f g h"])
    (tmp_path / "tokenizer.json").write_text(tokenizer.to_json())
    return ["--tokenizer-json", tmp_path / "tokenizer.json", "--maxlen", 5,
            "--parity-texts", texts_file(tmp_path, ["a b", "c d e"])]


@pytest.mark.parametrize("file,flags", [("lambda.h5", []), ("lambda_savedmodel", []),
                                        ("lambda_savedmodel", ["--trust-code"]), ("lambda.keras", [])])
def test_a_lambda_is_refused_before_it_runs(lambda_files, capsys, file, flags):
    code, out = run_import(capsys, lambda_files / file, lambda_files / "models", "x",
                           *preprocessing_flags(lambda_files), *flags)
    assert code == 2 and "layer 'lambda' (Lambda) holds Python code, which loading it would run" in out, out
    assert "Traceback" not in out
    assert not (lambda_files / MARKER).exists()
    assert not (lambda_files / "models" / "x").exists()


def test_custom_functions_and_classes_are_refused_before_loading(tmp_path, capsys):
    def relu_plus(x):
        return keras.ops.relu(x) + 1

    @keras.saving.register_keras_serializable(package="mine")
    class MyLSTM(keras.layers.LSTM):
        pass

    def model(*middle):
        return keras.Sequential([keras.Input((5,), dtype="int32"), keras.layers.Embedding(10, 4), *middle,
                                 keras.layers.Dense(1, activation="sigmoid")])

    model(keras.layers.LSTM(3, activation=relu_plus)).save(tmp_path / "function.keras")
    model(MyLSTM(3)).save(tmp_path / "class.keras")
    for file, reason in [("function.keras", "the Python function 'relu_plus' from module 'builtins' is not part "
                                            "of Keras; loading it would run its code"),
                         ("class.keras", "the class 'MyLSTM' from module 'tests.training.test_import_safety' is not "
                                         "part of Keras")]:
        code, out = run_import(capsys, tmp_path / file, tmp_path / "models", "x", *preprocessing_flags(tmp_path))
        assert code == 2 and reason in out and "refused before loading" in out, out


def test_every_savedmodel_flavour_gets_a_clear_answer(tmp_path, capsys):
    """Keras 3's model.export() (inference only) says what to import instead; a tf-keras SavedModel needs
    --trust-code (its graph's initializers run at load), and imports with it."""
    new = keras.Sequential([keras.Input((5,), dtype="int32"), keras.layers.Embedding(10, 4), keras.layers.LSTM(3),
                            keras.layers.Dense(1, activation="sigmoid")])
    new.export(tmp_path / "exported", verbose=False)
    old = tf_keras.Sequential([tf_keras.layers.Embedding(10, 4, input_length=5), tf_keras.layers.LSTM(3),
                               tf_keras.layers.Dense(1, activation="sigmoid")])
    old.build((None, 5))
    old.save(tmp_path / "tf_keras_savedmodel", save_format="tf")
    flags = [*preprocessing_flags(tmp_path), "--allow-unused-rows"]
    code, out = run_import(capsys, tmp_path / "exported", tmp_path / "models", "x", *flags)
    assert code == 2 and "SavedModel without Keras layers" in out and "model.save('model.keras')" in out, out
    assert "Traceback" not in out
    code, out = run_import(capsys, tmp_path / "tf_keras_savedmodel", tmp_path / "models", "x", *flags)
    assert code == 2 and "runs the TensorFlow operations stored in it" in out and "--trust-code" in out, out
    code, out = run_import(capsys, tmp_path / "tf_keras_savedmodel", tmp_path / "models", "x", *flags,
                           "--trust-code")
    assert code == 0, out
    assert read_package(tmp_path / "models" / "x" / "1").metadata.source["format"] == "savedmodel"


def padded_archive(model_file, out, pad: int):
    """A copy of a .keras archive whose config.json ends in `pad` bytes of JSON whitespace, compressed."""
    with zipfile.ZipFile(model_file) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            if info.filename != "config.json":
                dst.writestr(info.filename, src.read(info.filename))
                continue
            with dst.open("config.json", "w") as fh:
                fh.write(src.read("config.json"))
                chunk = b" " * (1 << 20)
                for _ in range(pad // len(chunk)):
                    fh.write(chunk)


def test_a_padded_archive_is_refused_before_it_is_decompressed(tmp_path, capsys):
    """A 300 MB config.json in a .keras file of under 1 MB: refused by the size its zip directory states,
    naming the limit, with less than 16 MiB allocated (Python's allocations, traced) on the way."""
    model = keras.Sequential([keras.Input((5,), dtype="int32"), keras.layers.Embedding(10, 4), keras.layers.LSTM(3),
                              keras.layers.Dense(1, activation="sigmoid")])
    model.save(tmp_path / "model.keras")
    padded_archive(tmp_path / "model.keras", tmp_path / "padded.keras", 300 << 20)
    assert (tmp_path / "padded.keras").stat().st_size < 1 << 20
    flags = preprocessing_flags(tmp_path)
    tracemalloc.start()
    try:
        code, out = run_import(capsys, tmp_path / "padded.keras", tmp_path / "models", "x", *flags)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert code == 2 and f"member 'config.json' would decompress to 300 MiB; the import reads at most " \
                          f"{size_text(MAX_CONFIG_BYTES)}" in out, out
    assert peak < 16 << 20, peak
    # The same archive padded a little stays within the limit and imports.
    padded_archive(tmp_path / "model.keras", tmp_path / "small_pad.keras", 1 << 20)
    code, out = run_import(capsys, tmp_path / "small_pad.keras", tmp_path / "models", "x", *flags,
                           "--allow-unused-rows")
    assert code == 0, out


# ONNX ------------------------------------------------------------------------------------------------------

def tiny_onnx(nodes_after_gather: list, extra_initializers: list, domains: list = ()) -> onnx.ModelProto:
    """ids int64 [N, T] -> Gather(table) -> ReduceMean over T -> [N, 2] logits, plus whatever is given."""
    table = numpy_helper.from_array(np.random.default_rng(0).normal(size=(8, 2)).astype(np.float32), "table")
    axes = numpy_helper.from_array(np.array([1], np.int64), "axes")
    nodes = [helper.make_node("Gather", ["table", "ids"], ["emb"]),
             helper.make_node("ReduceMean", ["emb", "axes"], ["mean"], keepdims=0), *nodes_after_gather]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("ids", TensorProto.INT64, ["N", "T"])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 2])],
                              [table, axes, *extra_initializers])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18),
                                                   *(helper.make_opsetid(d, 1) for d in domains)])


def test_onnx_custom_domains_and_outside_data_are_refused(tmp_path, capsys):
    (tmp_path / "vocab.txt").write_text("<pad>\na\nb\nc\nd\ne\nf\ng\n")
    flags = ["--vocab", tmp_path / "vocab.txt", "--maxlen", 4, "--output", "logits",
             "--parity-texts", texts_file(tmp_path, ["a b", "c"]), "--accept-unchecked"]
    custom = tiny_onnx([helper.make_node("Evil", ["mean"], ["logits"], domain="com.example.ops")], [],
                       ["com.example.ops"])
    onnx.save(custom, tmp_path / "custom.onnx")
    outside = tiny_onnx([helper.make_node("Add", ["mean", "bias"], ["logits"])],
                        [numpy_helper.from_array(np.zeros(2, np.float32), "bias")])
    (tmp_path / "secret.bin").write_bytes(np.zeros(2, np.float32).tobytes())
    (tmp_path / "model").mkdir()
    for tensor in outside.graph.initializer:
        if tensor.name == "bias":
            onnx.external_data_helper.set_external_data(tensor, "../secret.bin")
            tensor.ClearField("raw_data")
            tensor.data_location = TensorProto.EXTERNAL
    onnx.save(outside, tmp_path / "model" / "outside.onnx")
    plain = tiny_onnx([helper.make_node("Identity", ["mean"], ["logits"])], [])
    onnx.save(plain, tmp_path / "model" / "plain.onnx")
    for file, reason in [("custom.onnx", "operator 'Evil' of the custom domain 'com.example.ops'"),
                         ("model/outside.onnx", "keeps its data in '../secret.bin', which is not a file in the "
                                                "model's folder")]:
        code, out = run_import(capsys, tmp_path / file, tmp_path / "models", "x", *flags)
        assert code == 2 and reason in out and "Traceback" not in out, out
        assert not (tmp_path / "models" / "x").exists()
    code, out = run_import(capsys, tmp_path / "model" / "plain.onnx", tmp_path / "models", "x", *flags)
    assert code == 0, out


@pytest.mark.parametrize("dynamo", [True, False], ids=["dynamo", "torchscript"])
def test_external_data_from_torch_is_inlined_into_one_model_file(tmp_path, capsys, dynamo):
    """torch.onnx.export's model.onnx + model.onnx.data (asked for: the model is small) becomes a package whose
    model.onnx holds every weight and serves the notebook's outputs."""
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(9, 6, padding_idx=0)
            self.rnn = torch.nn.GRU(6, 5, batch_first=True)
            self.fc = torch.nn.Linear(5, 2)

        def forward(self, input_ids):
            _, h = self.rnn(self.emb(input_ids))
            return self.fc(h[-1])

    net = Net().eval()
    folder = tmp_path / "export"
    folder.mkdir()
    example = torch.tensor([[1, 2, 3, 0], [4, 5, 0, 0]])  # a batch of 1 would fix the batch axis at 1
    if dynamo:
        program = torch.onnx.export(net, (example,), dynamo=True, input_names=["input_ids"], output_names=["logits"],
                                    dynamic_shapes={"input_ids": {0: torch.export.Dim("batch")}})
        program.save(str(folder / "model.onnx"), external_data=True)
    else:
        torch.onnx.export(net, (example,), str(folder / "model.onnx"), dynamo=False, input_names=["input_ids"],
                          output_names=["logits"], dynamic_axes={"input_ids": {0: "batch"}, "logits": {0: "batch"}})
        model = onnx.load(folder / "model.onnx")
        onnx.save(model, folder / "model.onnx", save_as_external_data=True,
                  location="model.onnx.data", size_threshold=0)
    assert (folder / "model.onnx.data").stat().st_size > 0
    assert any(onnx.external_data_helper.uses_external_data(t)
               for t in onnx.load(folder / "model.onnx", load_external_data=False).graph.initializer)
    vocab = ["<pad>", "a", "b", "c", "d", "e", "f", "g", "h"]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    texts = ["a b c d", "h g", "e e e e", "b a d"]
    ids = np.array([[vocab.index(w) for w in t.split()] + [0] * (4 - len(t.split())) for t in texts])
    with torch.no_grad():
        logits = net(torch.tensor(ids)).numpy()
    np.savez(tmp_path / "reference.npz", ids=ids, outputs=logits)
    code, out = run_import(capsys, folder / "model.onnx", tmp_path / "models", "torch", "--vocab",
                           tmp_path / "vocab.txt", "--maxlen", 4, "--padding", "post", "--truncating", "post",
                           "--output", "logits", "--parity-texts", texts_file(tmp_path, texts),
                           "--reference", tmp_path / "reference.npz")
    assert code == 0, out
    package = tmp_path / "models" / "torch" / "1"
    assert sorted(p.name for p in package.iterdir() if p.name.startswith("model")) == ["model.onnx"]
    stored = onnx.load(package / "model.onnx", load_external_data=False)
    assert not any(onnx.external_data_helper.uses_external_data(t) for t in stored.graph.initializer)
    assert json.loads((package / "metadata.json").read_text())["parity"]["outputs_compared"]
