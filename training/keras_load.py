"""Loading a Keras model file that training/keras_config.py has read and checked, with safe mode on in every
loader: Keras 3 (`safe_mode=True`) for `.keras` and most `.h5` files; tf-keras (Keras 2) for the `.h5` files
Keras 3 cannot read and for SavedModel directories, inside tf-keras's safe-mode scope (its `safe_mode` argument
covers only its own `.keras` format; the scope also makes its legacy loaders refuse a Lambda's bytecode).

A SavedModel is loaded only when the user passes --trust-code: loading one restores its TensorFlow graph, whose
resource initializers run at load time, and those are operations the file chose (they may read and write
files). No check of the Keras configuration can see them.
"""

from __future__ import annotations

import json
import tempfile
import zipfile
from pathlib import Path

from rnnserve.training.keras_config import ARCHIVE_CONFIG, KerasFile, layer_name
from rnnserve.training.untrusted import MAX_CONFIG_BYTES, MAX_MODEL_BYTES, ImportRefused, open_zip, read_member


def load_keras_model(saved: KerasFile, trust_code: bool = False):
    """The Keras model of a checked file; ImportRefused where no loader can read it (both loaders' reasons)."""
    import keras

    if saved.format == "savedmodel":
        if not trust_code:
            raise ImportRefused(f"{saved.path.name} is a SavedModel: loading one runs the TensorFlow operations "
                                "stored in it, which no check of its Keras layers covers. Import the model saved as "
                                "a .keras or .h5 file, or pass --trust-code if you made or trust this SavedModel")
        return _tf_keras_load(saved.path)
    try:
        return keras.models.load_model(saved.path, compile=False, safe_mode=True)
    except Exception as exc:  # noqa: BLE001 - any failure: Keras 2's own loader may read an .h5 file
        if saved.format == "keras":
            raise ImportRefused(f"Keras cannot load {saved.path.name}: {exc}") from exc
        return _tf_keras_load(saved.path, exc)


def _tf_keras_load(path: Path, first: Exception | None = None):
    try:
        import tf_keras
        from tf_keras.src.saving.serialization_lib import SafeModeScope
    except ImportError as exc:
        raise ImportRefused(f"{path.name} needs tf-keras (Keras 2) to load: pip install 'rnnserve[train]'") from exc
    try:
        with SafeModeScope(True):
            return tf_keras.models.load_model(path, compile=False, safe_mode=True)
    except Exception as exc:  # noqa: BLE001 - unreadable by both loaders: say so, with both reasons
        also = f"; Keras 3: {first}" if first else ""
        raise ImportRefused(f"cannot load {path.name}: {exc}{also}") from exc


def load_without_text_vectorization(saved: KerasFile, vectorizer: dict):
    """The model of a .keras file whose first layer is a TextVectorization, without that layer: taking its ids
    (int64 [N, output_sequence_length]), its other layers' weights from the file. For files Keras cannot load
    back because of the layer (its vocabulary file, see keras_config.archive_text_vectorization). The archive is
    rewritten with the layer left out of config.json and its assets, then loaded as any other."""
    import keras

    config = json.loads(json.dumps(saved.config))  # a deep copy
    layers = config["config"]["layers"]
    name = layer_name(vectorizer)
    first = next((layer for layer in layers if layer.get("class_name") == "InputLayer"), None)
    length = (vectorizer.get("config") or {}).get("output_sequence_length")
    if first is None or not length:
        raise ImportRefused(f"{saved.path.name}: Keras cannot load it, and its TextVectorization has no input "
                            "layer or output_sequence_length to rebuild it without the layer")
    first["config"].update(dtype="int64", batch_shape=[None, length])
    first["config"].pop("batch_input_shape", None)
    layers.remove(next(layer for layer in layers if layer_name(layer) == name))
    for layer in layers:  # a functional model: the layer after it takes the input instead
        _rename_history(layer.get("inbound_nodes"), name, layer_name(first))
    with tempfile.TemporaryDirectory(prefix="rnnserve-import-") as tmp:
        rewritten = Path(tmp) / "model.keras"
        with open_zip(saved.path, dict.fromkeys(ARCHIVE_CONFIG, MAX_CONFIG_BYTES), MAX_MODEL_BYTES,
                      "model file") as archive, zipfile.ZipFile(rewritten, "w") as out:
            for info in archive.infolist():
                if info.filename.startswith(f"assets/layers/{name}/"):
                    continue
                data = (json.dumps(config).encode() if info.filename == "config.json"
                        else read_member(archive, info.filename, MAX_MODEL_BYTES))
                out.writestr(info.filename, data)
        try:
            return keras.models.load_model(rewritten, compile=False, safe_mode=True)
        except Exception as exc:  # noqa: BLE001 - Keras's reason is the message
            raise ImportRefused(f"Keras cannot load {saved.path.name}, even without its TextVectorization: "
                                f"{exc}") from exc


def _rename_history(node, old: str, new: str) -> None:
    if isinstance(node, dict):
        history = node.get("keras_history") if node.get("class_name") is None else None
        if isinstance(history, list) and history and history[0] == old:
            history[0] = new
        for value in node.values():
            _rename_history(value, old, new)
    elif isinstance(node, list):
        if node and node[0] == old and len(node) >= 3 and isinstance(node[1], int):  # tf-keras [name, i, j, {}]
            node[0] = new
        for value in node:
            _rename_history(value, old, new)
