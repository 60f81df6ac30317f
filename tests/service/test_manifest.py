"""A package is hashed whole (manifest.json): a file changed, added or removed refuses the version with the file
named, at load and by polling, while the version already loaded keeps serving; graphs are loaded from the
checked bytes, so external data files (read by onnxruntime beside a graph) are refused, never read."""

import hashlib
import json
import shutil

import onnx
import pytest

from rnnserve.service.core.package import MANIFEST, PackageError, read_package, seal
from rnnserve.service.runtime.loader import open_model
from tests.conftest import in_process, wait_ready, wait_until


@pytest.fixture()
def package(model_repo, tmp_path):
    path = tmp_path / "models" / "sentiment-lstm" / "1"
    shutil.copytree(model_repo / "sentiment-lstm" / "1", path)
    return path


def _append(path):
    with open(path, "ab") as fh:
        fh.write(b"\0")


@pytest.mark.parametrize("change, named", [
    (lambda p: _append(p / "model.onnx"), "model.onnx was changed"),
    (lambda p: (p / "tokenizer.json").write_text((p / "tokenizer.json").read_text().replace("the", "thee", 1)),
     "tokenizer.json was changed"),
    (lambda p: (p / "metadata.json").write_text((p / "metadata.json").read_text() + " "), "metadata.json was changed"),
    (lambda p: (p / "model.onnx.data").write_bytes(b"weights"), "model.onnx.data is not in manifest.json"),
    (lambda p: (p / "tokenizer.json").unlink(), "missing tokenizer.json"),
    (lambda p: (p / MANIFEST).unlink(), "missing manifest.json"),
    (lambda p: (p / MANIFEST).write_text(json.dumps({"format": "rnnserve-manifest/1", "files": {
        "../../etc/passwd": {"bytes": 1, "sha256": "0" * 64}}})), "plain names"),
])
def test_a_file_changed_added_or_removed_refuses_the_package_naming_it(package, change, named):
    read_package(package)
    change(package)
    with pytest.raises(PackageError, match=named.replace(".", r"\.")):
        read_package(package)


def test_a_file_changed_after_the_check_is_not_loaded(package):
    """The graph onnxruntime loads is the bytes checked against the manifest, read again at the load."""
    checked = read_package(package)
    _append(package / "model.onnx")
    with pytest.raises(PackageError, match="model.onnx was changed"):
        checked.read("model.onnx")


def test_a_graph_with_external_data_is_refused_even_with_the_file_at_hand(package, tmp_path, monkeypatch):
    """torch's exporter writes model.onnx + model.onnx.data; onnxruntime reads such a file beside the graph,
    or beside the working directory for a graph given as bytes. A package keeps its weights in its graph."""
    graph = onnx.load(package / "model.onnx")
    onnx.save_model(graph, package / "model.onnx", save_as_external_data=True, all_tensors_to_one_file=True,
                    location="model.onnx.data", size_threshold=0)
    meta = json.loads((package / "metadata.json").read_text())
    meta["onnx"]["sha256"] = hashlib.sha256((package / "model.onnx").read_bytes()).hexdigest()
    (package / "metadata.json").write_text(json.dumps(meta))
    seal(package)  # the data file is in the manifest: complete and unchanged, and still refused
    shutil.copy(package / "model.onnx.data", tmp_path)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(PackageError, match="external data"):
        open_model(package)


def test_a_changed_version_is_refused_at_reload_and_by_polling_while_the_loaded_one_serves(package):
    repo = package.parent.parent
    with in_process(repo, repository_poll_s=0.05) as client:
        wait_ready(client)
        before = client.post("/v1/models/sentiment-lstm/predict", json={"text": "a fine film"}).json()
        # The weights of the version being served are swapped on disk, and a reload is asked for.
        graph = onnx.load(package / "model.onnx")
        for init in graph.graph.initializer:
            init.raw_data = bytes(len(init.raw_data))
        onnx.save(graph, package / "model.onnx")
        r = client.post("/v2/repository/models/sentiment-lstm/load")
        assert r.status_code == 400 and "model.onnx was changed" in r.json()["error"]
        after = client.post("/v1/models/sentiment-lstm/predict", json={"text": "a fine film"}).json()
        assert after == before
        # A new version appears carrying those weights: polling reports it and version 1 keeps serving.
        shutil.copytree(package, package.parent / "2")

        def reason():
            rows = client.post("/v2/repository/index").json()
            return next((row["reason"] for row in rows if row["version"] == "2"), "")

        wait_until(lambda: "model.onnx was changed" in reason(), what="polling to report version 2")
        served = client.post("/v1/models/sentiment-lstm/predict", json={"text": "a fine film"}).json()
        assert served == before
