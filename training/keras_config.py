"""A Keras model file's configuration, read as data before any Keras loader sees the file.

tf-keras rebuilds a Lambda layer of an `.h5` file or SavedModel by unmarshalling Python bytecode and calling it;
a custom class or function named in a configuration is imported and run. So the import first reads the
configuration itself, through bounded reads (training/untrusted.py) and parsers that run nothing: a Keras 3
`.keras` archive's `config.json`, an HDF5 file's `model_config` attribute (h5py), a tf-keras SavedModel's
`keras_metadata.pb` (protobuf). `check_code` refuses what would run code (Lambda layers, Python functions,
objects from modules outside Keras, registered custom objects) and `layer_chain` gives the layers in order,
checking the graph's structure (each layer takes the previous one's output) from the configuration, so masks
Keras attaches on reload do not matter. Only then does the importer load the file, with safe mode on.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from rnnserve.training.untrusted import (
    MAX_CONFIG_BYTES,
    MAX_MODEL_BYTES,
    MAX_TEXT_BYTES,
    ImportRefused,
    check_size,
    open_zip,
    read_bytes,
    read_member,
)

KERAS_MODULES = ("keras", "tf_keras")  # a configuration's objects come from these packages, or are refused
CODE_LAYERS = ("Lambda", "TFOpLambda", "SlicingOpLambda")  # layers whose configuration carries Python code
ARCHIVE_CONFIG = ("config.json", "metadata.json")
TV_VOCABULARY = "vocabulary.txt"  # a TextVectorization's vocabulary in a .keras archive's assets


@dataclass
class KerasFile:
    """A model file read as data: format ("keras", "h5" or "savedmodel"), the model's configuration
    ({"class_name", "config"}) and what the file says about the Keras that saved it."""

    path: Path
    format: str
    config: dict
    saved_by: dict = field(default_factory=dict)


def read_keras_file(path: Path) -> KerasFile:
    """The file's configuration, its code refused (check_code); ImportRefused where it is no Keras model file,
    too large, or a SavedModel without Keras layers."""
    path = Path(path)
    if path.is_dir():
        saved = _saved_model(path)
    elif path.suffix == ".keras":
        saved = _keras_archive(path)
    elif path.suffix in (".h5", ".hdf5"):
        saved = _hdf5(path)
    else:
        raise ImportRefused(f"{path.name}: expected a .keras or .h5 file, a SavedModel directory or a .onnx file")
    if not isinstance(saved.config, dict) or not isinstance(saved.config.get("config"), dict):
        raise ImportRefused(f"{path.name}: the model configuration is not a Keras model's ({{class_name, config}})")
    return saved


def _keras_archive(path: Path) -> KerasFile:
    import zipfile

    if not zipfile.is_zipfile(path):
        raise ImportRefused(f"{path.name} is not a Keras model file: a .keras file is a zip archive (model.save)")
    with open_zip(path, dict.fromkeys(ARCHIVE_CONFIG, MAX_CONFIG_BYTES), MAX_MODEL_BYTES, "model file") as archive:
        names = set(archive.namelist())
        if "config.json" not in names:
            raise ImportRefused(f"{path.name} has no config.json: not a Keras 3 model file")
        config = _json(read_member(archive, "config.json", MAX_CONFIG_BYTES), f"{path.name}'s config.json")
        saved_by = {}
        if "metadata.json" in names:
            meta = _json(read_member(archive, "metadata.json", MAX_CONFIG_BYTES), f"{path.name}'s metadata.json")
            saved_by = {"keras_version": meta.get("keras_version"), "saved_at": meta.get("date_saved")}
    check_code(config, path.name)
    return KerasFile(path, "keras", config, saved_by)


def _hdf5(path: Path) -> KerasFile:
    import h5py  # TensorFlow's own dependency

    check_size(path, MAX_MODEL_BYTES, "model file")
    if not h5py.is_hdf5(path):
        raise ImportRefused(f"{path.name} is not a Keras model file: a .h5 file is HDF5 (model.save)")
    with h5py.File(path, "r") as f:
        if "model_config" not in f.attrs:
            raise ImportRefused(f"{path.name} holds no model configuration (weights only, from save_weights?): "
                                "save the whole model (model.save)")
        size = f.attrs.get_id("model_config").get_storage_size()  # before h5py reads the value
        if size > MAX_CONFIG_BYTES:
            raise ImportRefused(f"{path.name}: its model_config is {size:,} bytes; the import reads at most "
                                f"{MAX_CONFIG_BYTES:,}")
        raw = f.attrs["model_config"]
        saved_by = {k: str(f.attrs[k]) for k in ("keras_version", "backend") if k in f.attrs}
    config = _json(raw.encode() if isinstance(raw, str) else bytes(raw), f"{path.name}'s model_config")
    check_code(config, path.name)
    return KerasFile(path, "h5", config, saved_by)


def _saved_model(path: Path) -> KerasFile:
    if not (path / "saved_model.pb").is_file():
        raise ImportRefused(f"{path} is a directory without saved_model.pb: not a SavedModel")
    check_size(path, MAX_MODEL_BYTES, "SavedModel")
    if not (path / "keras_metadata.pb").is_file():
        raise ImportRefused(f"{path.name} is a SavedModel without Keras layers (no keras_metadata.pb): Keras 3's "
                            "model.export() and tf.saved_model.save write inference-only graphs, which cannot be "
                            "checked layer by layer. Import the Keras file instead: model.save('model.keras') "
                            "(Keras 3) or model.save('model.h5')")
    from tf_keras.protobuf import saved_metadata_pb2

    metadata = saved_metadata_pb2.SavedMetadata()
    try:
        metadata.ParseFromString(read_bytes(path / "keras_metadata.pb", MAX_CONFIG_BYTES, "keras_metadata.pb"))
    except Exception as exc:  # noqa: BLE001 - protobuf's DecodeError and its relatives: the file is not metadata
        raise ImportRefused(f"{path.name}/keras_metadata.pb does not parse: {exc}") from exc
    config = None
    for node in metadata.nodes:  # every object tf-keras would revive, not only the model's layers
        described = _json(node.metadata.encode(), f"{path.name}/keras_metadata.pb")
        check_code(described, path.name)
        if node.node_path == "root":
            config = {"class_name": described.get("class_name"), "config": described.get("config")}
    if config is None:
        raise ImportRefused(f"{path.name}/keras_metadata.pb describes no root model")
    return KerasFile(path, "savedmodel", config)


def _json(data: bytes, what: str):
    try:
        return json.loads(data)
    except ValueError as exc:
        raise ImportRefused(f"{what} is not JSON: {exc}") from None


def check_code(config, file: str) -> None:
    """ImportRefused where loading the configuration would run code: a Lambda (or tf-keras TFOpLambda) layer, a
    serialized Python function, an object from a module outside Keras, a registered custom object. A model's
    compile or training configuration is left out: the import loads with compile=False."""
    if isinstance(config, dict):
        config = {k: v for k, v in config.items() if k not in ("compile_config", "training_config")}
    for obj in _objects(config):
        kind, module, registered = obj.get("class_name"), obj.get("module"), obj.get("registered_name")
        inner = obj.get("config") if isinstance(obj.get("config"), dict) else {}
        name = repr(inner.get("name") or obj.get("name") or kind)
        if kind in CODE_LAYERS or kind == "__lambda__" or inner.get("function_type") == "lambda":
            raise ImportRefused(f"{file}: layer {name} ({kind}) holds Python code, which loading it would run; "
                                "refused before loading. A Lambda layer cannot be served either: rebuild the model "
                                "without it")
        if isinstance(module, str) and module.split(".")[0] not in KERAS_MODULES:
            what = f"the Python function {obj.get('config')!r}" if kind == "function" else f"the class {kind!r}"
            raise ImportRefused(f"{file}: {what} from module {module!r} is not part of Keras; loading it would run "
                                "its code; refused before loading")
        if registered not in (None, kind):
            raise ImportRefused(f"{file}: {kind!r} is a custom object ({registered!r}), whose code is not in the "
                                "file; refused before loading")


def _objects(node):
    """Every dict with a class_name in a configuration, depth first."""
    stack = [node]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if isinstance(node.get("class_name"), str):
                yield node
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)


def layer_name(layer: dict) -> str:
    return str(layer.get("name") or (layer.get("config") or {}).get("name"))


def layer_chain(config: dict) -> list[dict]:
    """The model's layer configurations in order (InputLayer left out, and the masks Keras 3 computes as NotEqual
    operations on the ids), each taking the previous one's output and nothing else but a mask; else
    ImportRefused naming the first layer that does not."""
    kind, inner = config.get("class_name"), config.get("config") or {}
    layers = inner.get("layers")
    if not isinstance(layers, list) or not all(isinstance(layer, dict) for layer in layers):
        raise ImportRefused(f"the model is a {kind}: supported are Sequential and functional models")
    if kind == "Sequential":
        return [layer for layer in layers if layer.get("class_name") != "InputLayer"]
    if kind not in ("Functional", "Model"):
        raise ImportRefused(f"the model is a {kind}: supported are Sequential and functional models")
    inputs, outputs = _history(inner.get("input_layers")), _history(inner.get("output_layers"))
    if len(inputs) != 1 or len(outputs) != 1:
        raise ImportRefused("the model must have one input and one output")
    masks: dict[str, str] = {}  # NotEqual(ids, 0) layers -> the layer giving their ids
    chain, previous = [], inputs[0]
    for layer in layers:
        name, nodes = layer_name(layer), layer.get("inbound_nodes") or []
        if layer.get("class_name") == "InputLayer":
            continue
        if len(nodes) != 1:
            raise ImportRefused(f"layer {name!r} is called {len(nodes)} times: a model with branches or shared "
                                "layers is not supported")
        data, mask, constants = _node_inputs(nodes[0])
        if layer.get("class_name") == "NotEqual" and len(data) == 1 and constants == [0]:
            masks[name] = data[0]  # ids != 0: a masking Embedding's mask, which the package computes the same way
            continue
        if data != [previous] or not set(mask) <= masks.keys():
            raise ImportRefused(f"layer {name!r} does not take the previous layer's output: a model with branches "
                                "or shared layers is not supported")
        chain.append(layer)
        previous = name
    if previous != outputs[0]:
        raise ImportRefused(f"the model's output is layer {outputs[0]!r}, not the last of the chain {previous!r}")
    names = [inputs[0], *(layer_name(layer) for layer in chain)]
    embedding = next((i for i, layer in enumerate(chain) if layer.get("class_name") == "Embedding"), None)
    for mask, ids in masks.items():  # a mask of anything but the Embedding's own ids is a branch
        if embedding is None or ids != names[embedding]:
            raise ImportRefused(f"layer {mask!r} compares {ids!r} with 0, which is not the Embedding's input: a "
                                "model with branches or shared layers is not supported")
    return chain


def _history(refs) -> list[str]:
    """Layer names from input_layers/output_layers: [name, i, j] or a list of them."""
    if isinstance(refs, list) and refs and isinstance(refs[0], str):
        refs = [refs]
    return [ref[0] for ref in refs or [] if isinstance(ref, list) and ref]


def _node_inputs(node) -> tuple[list[str], list[str], list]:
    """(layers whose outputs a call takes as data, layers giving its mask, its constant arguments): Keras 3's
    {"args", "kwargs"} with __keras_tensor__ entries, or tf-keras's [[name, node, tensor, kwargs], ...]."""
    if isinstance(node, list):  # tf-keras: masks travel with the tensors, implicitly
        return [ref[0] for ref in node if isinstance(ref, list) and ref], [], []
    data, constants = [], []
    for arg in node.get("args") or []:
        tensors = _tensor_sources(arg)
        data += tensors
        if not tensors:
            constants.append(arg)
    mask = []
    for key, value in (node.get("kwargs") or {}).items():
        (mask if key == "mask" else data).extend(_tensor_sources(value))
    return data, mask, constants


def _tensor_sources(value) -> list[str]:
    return [obj["config"]["keras_history"][0] for obj in _objects(value)
            if obj.get("class_name") == "__keras_tensor__" and isinstance(obj.get("config"), dict)
            and obj["config"].get("keras_history")]


def archive_text_vectorization(path: Path, layer: dict) -> tuple[dict, list[str]]:
    """A TextVectorization layer's configuration and vocabulary read from a .keras archive, for files Keras
    cannot load back: Keras writes the vocabulary one token a line and reads it back with str.splitlines(), which
    also breaks at U+0085, U+2028 and the other Unicode line boundaries inside tokens. Split at "\\n" alone, the
    file gives the tokens as written; a token holding "\\n" itself (split="character" with standardize=None) makes
    the file ambiguous, and is refused."""
    config = dict(layer.get("config") or {})
    if config.get("vocabulary") is not None:  # given to the constructor: the configuration holds it
        return config, ["", "[UNK]", *config["vocabulary"]]
    name = layer_name(layer)
    with open_zip(path, dict.fromkeys(ARCHIVE_CONFIG, MAX_CONFIG_BYTES), MAX_MODEL_BYTES, "model file") as archive:
        # TextVectorization writes the file, and its inner StringLookup the same one below it
        candidates = [f"assets/layers/{name}/{TV_VOCABULARY}", f"assets/layers/{name}/_lookup_layer/{TV_VOCABULARY}"]
        found = next((m for m in candidates if m in archive.namelist()), None)
        if found is None:
            raise ImportRefused(f"{path.name}: no vocabulary file for layer {name!r} in the archive ({candidates[0]})")
        text = read_member(archive, found, MAX_TEXT_BYTES).decode("utf-8")
    vocabulary = text.split("\n")
    while len(vocabulary) > 2 and vocabulary[-1] == "":  # Keras drops trailing empty lines too
        vocabulary.pop()
    if "" in vocabulary[1:]:
        raise ImportRefused(f"{path.name}: layer {name!r}'s vocabulary file has an empty line after the mask "
                            "token: a token holding a line break cannot be told apart; save the layer beside the "
                            "model as JSON (config and get_vocabulary())")
    return config, vocabulary
