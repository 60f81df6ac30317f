"""Import a model trained elsewhere: a Keras file (Keras 3 `.keras`; Keras 2 / tf.keras `.h5` or SavedModel
directory) or an ONNX recurrent classifier, with the user's own text preprocessing, into a model package.

The package is the one a training run exports (model.onnx with native recurrent nodes for Keras models, the
tokenizer spec, metadata with `source` saying where it came from), written only after the parity gate: on the
user's texts, the user's own pipeline (the Keras dataset's ids, tf-keras's Tokenizer + pad_sequences, or the
TextVectorization layer; then the Keras model) against the package as the service runs it (our tokenizer, then
onnxruntime): identical ids, identical labels, probabilities within atol. Anything that cannot be reproduced is
refused with the layer or option named (ImportRefused), never exported silently wrong.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import onnx

from rnnserve.service.core.package import INPUT_NAME, OUTPUT_NAME, Task
from rnnserve.service.core.tokenizer import Tokenizer, TokenizerSpec
from rnnserve.training import profiling
from rnnserve.training.export import (
    ExportError,
    check_target,
    convert,
    library_versions,
    softmax,
    write_package,
)
from rnnserve.training.keras_config import (
    KerasFile,
    archive_text_vectorization,
    layer_chain,
    layer_name,
    read_keras_file,
)
from rnnserve.training.keras_load import load_keras_model, load_without_text_vectorization
from rnnserve.training.preprocessing import PreprocessingError, from_keras_tokenizer, from_text_vectorization
from rnnserve.training.profiling import PROFILE_TEXTS, sample
from rnnserve.training.untrusted import MAX_TEXT_BYTES, ImportRefused, check_size, read_text

MAX_REFERENCE_TEXTS = 100_000  # read from --reference-texts, then sampled
# The layers an import converts, by class name (Keras 3 and tf-keras alike).
FRONT_LAYERS = ("Embedding", "Conv1D", "MaxPooling1D", "Dropout", "SpatialDropout1D")
RECURRENT_LAYERS = ("SimpleRNN", "GRU", "LSTM", "Bidirectional")
HEAD_LAYERS = ("GlobalMaxPooling1D", "GlobalAveragePooling1D", "Dense", "Dropout")
SUPPORTED = ("InputLayer", "TextVectorization", *FRONT_LAYERS, *RECURRENT_LAYERS, *HEAD_LAYERS)
OUTPUTS = ("probabilities", "logits")
PARITY_TEXTS = 1000  # the default count of dataset documents in the gate
UNUSED_ROWS_TOLERATED = 0.1  # the share of embedding rows a preprocessing may leave unreached (check_vocabulary)


@dataclass
class Preprocessing:
    """How the user's texts became ids: one of vocabulary ("imdb" or "reuters": the Keras dataset's ids, with
    num_words, skip_top and pad_sequences' maxlen, padding, truncating as the notebook called them),
    tokenizer_json (tf-keras `Tokenizer.to_json()`, with pad_sequences' options), text_vectorization (a JSON
    `{"config": layer.get_config(), "vocabulary": layer.get_vocabulary()}` or a .keras file whose first layer is
    the layer), none when the model starts with its TextVectorization, or for ONNX models vocab_file (one token
    per line, line i = id i; or a JSON {token: id}) with the rules of training/vocabularies.py: lower,
    punctuation (keep, space, delete), token_pattern (None: str.split()), unknown_token, pad_token, start_token
    and end_token; or hf_tokenizer (a Hugging Face tokenizers file, training/vocabularies.py).
    allow_unused_rows: accept a preprocessing whose ids reach less than 90% of the embedding's rows."""

    vocabulary: str | None = None
    tokenizer_json: Path | None = None
    text_vectorization: Path | None = None
    vocab_file: Path | None = None
    maxlen: int | None = None
    padding: str = "pre"
    truncating: str = "pre"
    num_words: int | None = None
    skip_top: int = 0
    lower: bool = True
    punctuation: str = "keep"
    token_pattern: str | None = None
    unknown_token: str | None = None
    pad_token: str | None = None
    start_token: str | None = None
    end_token: str | None = None
    hf_tokenizer: Path | None = None
    data_dir: Path | None = None
    allow_unused_rows: bool = False  # see check_vocabulary

    @property
    def given(self) -> list:
        return [g for g in (self.vocabulary, self.tokenizer_json, self.text_vectorization, self.vocab_file,
                            self.hf_tokenizer) if g]


@dataclass
class Gate:
    """The parity gate's texts (a CSV/JSONL/text file; default for a dataset vocabulary: its documents), at most
    `examples` of them, and the largest allowed probability difference. reference: for ONNX imports, a .npz of
    the user's own `ids` [N, T] and/or `outputs` [N, C] for those texts; accept_unchecked: the user accepts an
    ONNX package checked for shapes only, without a reference. reference_texts: the texts of the package's drift
    profile (default: the parity texts)."""

    texts: Path | None = None
    text_column: str = "text"
    reference: Path | None = None
    accept_unchecked: bool = False
    examples: int = PARITY_TEXTS
    atol: float = 1e-5
    reference_texts: Path | None = None


@dataclass
class Pipeline:
    """The user's preprocessing: the spec that reproduces it, a function giving its own ids for texts (the
    user's library doing it; None for a dataset, whose stored ids are the reference) and what metadata records."""

    spec: TokenizerSpec
    ids: Callable[[list[str]], np.ndarray] | None
    source: dict


def import_model(model_path: str | Path, models_dir: str | Path, name: str, prep: Preprocessing, gate: Gate, *,
                 version: int = 1, labels: list[str] | None = None, output: str = "probabilities",
                 overwrite: bool = False, trust_code: bool = False) -> Path:
    """Import a Keras model (.keras, .h5, SavedModel directory) into MODELS/NAME/VERSION through the gate. The
    file's configuration is read and checked first (training/keras_config.py: no code, a chain of supported
    layers), and only then loaded, in safe mode (training/keras_load.py; a SavedModel only with trust_code).
    output "logits": the last Dense is linear and the package serves its sigmoid/softmax. Raises ImportRefused
    (with the reason) or ExportError (the gate, with its figures)."""
    model_path = Path(model_path)
    check_common(model_path, models_dir, name, version, output, prep, overwrite)
    if prep.vocab_file or prep.hf_tokenizer:
        raise ImportRefused("--vocab and --hf-tokenizer describe an ONNX model's preprocessing; a Keras model takes "
                            "--vocabulary, --tokenizer-json or --text-vectorization")
    saved = read_keras_file(model_path)
    chain = check_kinds(layer_chain(saved.config))
    inner = chain[0] if chain[0].get("class_name") == "TextVectorization" else None
    if inner is not None and prep.given:
        raise ImportRefused("the model starts with its own TextVectorization layer: give no other preprocessing")
    model, vectorizer = _load(saved, inner, trust_code)
    by_name = {layer.name: layer for layer in model.layers}
    layers = [by_name[layer_name(layer)] for layer in chain if layer is not inner]
    input_length = (inner["config"].get("output_sequence_length") if inner is not None
                    else _input_length(model))
    prep = replace(prep, maxlen=prep.maxlen or input_length)
    if vectorizer is not None:
        config, vocabulary, layer, note = vectorizer
        pipeline = _text_vectorization_pipeline(config, vocabulary, prep.maxlen, layer,
                                                {"kind": "text-vectorization", "in_model": True} | note)
    else:
        pipeline = preprocessing(prep)
    check_settings(layers)
    spec = pipeline.spec
    if input_length and spec.maxlen != input_length:
        raise ImportRefused(f"the model takes sequences of {input_length} ids; the preprocessing pads to "
                            f"{spec.maxlen} (--maxlen)")
    units, activation = _head(layers)
    _check_output(activation, output, layers[-1].name)
    labels = check_labels(labels, prep.vocabulary, max(units, 2))
    embedding = next((layer for layer in layers if type(layer).__name__ == "Embedding"), None)
    if embedding is None:
        raise ImportRefused("the model has no Embedding layer: a text model maps ids to vectors first")
    check_vocabulary(spec, int(embedding.input_dim), f"the model's Embedding {embedding.name!r}",
                     allow_unused_rows=prep.allow_unused_rows or inner is not None)
    masked = bool(getattr(embedding, "mask_zero", False))
    if masked and any(type(layer).__name__ == "GlobalMaxPooling1D" for layer in layers):
        raise ImportRefused("GlobalMaxPooling1D after a masked Embedding: Keras's max pooling reads the steps the "
                            "mask hides, which the native recurrent operators zero; not exported. Supported after "
                            "a mask: the last step, GlobalAveragePooling1D")
    try:
        proto = convert(model, spec.maxlen, logits=output == "logits")
    except ExportError as exc:
        raise ImportRefused(str(exc)) from exc
    # Masked models ignore padding: the package pads after the tokens, only to the batch's longest text.
    package_spec = replace(spec, padding="post") if masked else spec
    texts, user_ids = gate_inputs(gate, pipeline, prep)
    takes_strings = vectorizer is not None and vectorizer[2] is not None  # the layer as Keras loaded it

    def user_predict(ids):
        raw = model.predict(_string_batch(texts) if takes_strings else ids, batch_size=256, verbose=0)
        return probabilities(raw, output == "logits")

    parity = text_gate(user_predict, texts, user_ids, proto, spec, package_spec, masked, gate.atol)
    source = {"kind": "imported", "file": model_path.name, "format": saved.format, "sha256": sha256_path(model_path),
              "output": output, "preprocessing": pipeline.source} | saved.saved_by
    metadata = classifier_metadata(package_spec, labels, masked, parity, source,
                                   {"layers": [type(layer).__name__ for layer in layers],
                                    "params": int(model.count_params()), "vocab_size": int(embedding.input_dim)})
    return write_package(models_dir, name, version, proto, {"tokenizer.json": package_spec.to_json()}, metadata,
                         library_versions(), overwrite=overwrite, reference=profile_reference(gate, texts))


def profile_reference(gate: Gate, parity_texts: list[str]) -> tuple[list[str], str]:
    """The drift profile's texts and their description: --reference-texts, else the gate's parity texts."""
    if gate.reference_texts is None:
        return sample(parity_texts), f"{min(len(parity_texts), PROFILE_TEXTS)} of the import's parity texts"
    texts = sample(read_texts(gate.reference_texts, gate.text_column, MAX_REFERENCE_TEXTS))
    return texts, f"{len(texts)} texts sampled (seed 0) from {gate.reference_texts.name}"


def _load(saved: KerasFile, inner: dict | None, trust_code: bool):
    """(model, None), or for a model with its TextVectorization inside, (model, (config, vocabulary, layer)):
    the layer as Keras loaded it, or, where Keras cannot load the file, the model without it and the layer's
    configuration and vocabulary read from the archive (layer None: the gate rebuilds it from them)."""
    try:
        model = load_keras_model(saved, trust_code)
    except ImportRefused as exc:
        if inner is None or saved.format != "keras":
            raise
        config, vocabulary = archive_text_vectorization(saved.path, inner)
        model = load_without_text_vectorization(saved, inner)
        reason = " ".join(str(exc.__cause__ or exc).split())[:400]
        return model, (config, vocabulary, None, {"read_from_archive": reason})
    if inner is None:
        return model, None
    layer = next(x for x in model.layers if type(x).__name__ == "TextVectorization")
    return model, (layer.get_config(), layer.get_vocabulary(), layer, {})


def check_common(model_path: Path, models_dir, name: str, version: int, output: str, prep: Preprocessing,
                 overwrite: bool) -> None:
    """The checks every import makes before loading anything."""
    if output not in OUTPUTS:
        raise ImportRefused(f"--output must be one of {', '.join(OUTPUTS)}")
    check_target(models_dir, name, version, overwrite)
    if not model_path.exists():
        raise ImportRefused(f"{model_path} does not exist")
    if len(prep.given) > 1:
        raise ImportRefused("give one preprocessing: --vocabulary, --tokenizer-json, --text-vectorization, --vocab "
                            "or --hf-tokenizer")


def classifier_metadata(spec: TokenizerSpec, labels: list[str], dynamic: bool, parity: dict, source: dict,
                        architecture: dict) -> dict:
    """The metadata of an imported text classifier (write_package adds the rest)."""
    return {"task": Task.TEXT_CLASSIFICATION, "labels": labels, "maxlen": spec.maxlen,
            "input": {"name": INPUT_NAME, "dtype": "int64", "shape": [None, None if dynamic else spec.maxlen]},
            "output": {"name": OUTPUT_NAME, "dtype": "float32", "shape": [None, len(labels)]},
            "dynamic_length": dynamic, "padding": spec.padding, "truncating": spec.truncating,
            "architecture": architecture, "parity": parity, "source": source}


def check_vocabulary(spec: TokenizerSpec, input_dim: int, what: str, allow_unused_rows: bool = False) -> None:
    """The ids the preprocessing gives must be rows of the model's embedding, and (unless allow_unused_rows)
    reach at least 90% of them: the gate runs the pipeline it is given, so a tokenizer with a smaller vocabulary
    than the model was trained with (num_words 5000 for a 10000-word model, another notebook's Tokenizer) would
    pass it and serve every word past its vocabulary as unknown. The 10% leave room for the usual slack
    (Embedding(len(word_index) + 1), Embedding(max_tokens + 1), a vocabulary a little short of max_tokens)."""
    highest = Tokenizer(spec).max_id
    if highest >= input_dim:
        raise ImportRefused(f"the preprocessing gives ids up to {highest} but {what} takes ids 0..{input_dim - 1}: "
                            "the vocabulary does not fit the model (num_words or max_tokens differ?)")
    unused = input_dim - 1 - highest
    if unused > UNUSED_ROWS_TOLERATED * input_dim and not allow_unused_rows:
        raise ImportRefused(f"the preprocessing gives ids up to {highest} but {what} has {input_dim} rows: "
                            f"{unused} of them ({unused / input_dim:.0%}) no text would reach. Was the model "
                            "trained with a larger vocabulary (num_words, max_tokens, another Tokenizer)? The gate "
                            "runs the preprocessing you give, so it cannot tell; if this is the one the model was "
                            "trained with, pass --allow-unused-rows")


def check_kinds(chain: list[dict]) -> list[dict]:
    """The chain's layers (configurations, before anything is loaded) are all supported, a TextVectorization
    only first; else ImportRefused naming the first that is not, with the list."""
    for i, layer in enumerate(chain):
        kind = layer.get("class_name")
        if kind not in SUPPORTED or (kind == "TextVectorization" and i):
            supported = ", ".join(FRONT_LAYERS + RECURRENT_LAYERS + HEAD_LAYERS[:-1])
            raise ImportRefused(f"layer {layer_name(layer)!r} ({kind}) is not supported; supported: "
                                f"TextVectorization (first), {supported}, in one chain (Sequential or functional "
                                "without branches)")
    return chain


def check_settings(layers: list) -> None:
    """The loaded layers hold a recurrent one, with the settings a served text allows: no state returned or
    kept between calls."""
    if not any(type(layer).__name__ in RECURRENT_LAYERS for layer in layers):
        raise ImportRefused("the model has no SimpleRNN, GRU or LSTM layer")
    for layer in layers:
        kind = type(layer).__name__
        recurrent = getattr(layer, "forward_layer", layer)  # a Bidirectional's settings are its layers'
        for setting in ("return_state", "stateful"):
            if getattr(recurrent, setting, False):
                raise ImportRefused(f"layer {layer.name!r} ({kind}) has {setting}=True: a served text is one "
                                    "whole sequence, its state starting from zeros and never returned; supported: "
                                    f"{kind} with return_state and stateful False")


def _input_length(model) -> int | None:
    """The id sequence length the model was built for (None: any)."""
    shape = model.inputs[0].shape if getattr(model, "inputs", None) else None
    if shape is None or len(shape) != 2:
        raise ImportRefused(f"the model's input shape {shape} is not [batch, steps] of ids")
    return int(shape[1]) if shape[1] is not None else None


def _head(layers) -> tuple[int, str]:
    last = layers[-1]
    if type(last).__name__ != "Dense":
        raise ImportRefused(f"the model ends in {type(last).__name__} {last.name!r}; a classifier ends in Dense")
    return int(last.units), getattr(last.activation, "__name__", str(last.activation))


def _check_output(activation: str, output: str, layer: str) -> None:
    if output == "probabilities" and activation == "linear":
        raise ImportRefused(f"the last layer {layer!r} has no activation: its outputs are not probabilities. If "
                            "they are logits (as from_logits=True trained them), pass --output logits and the "
                            "package serves their sigmoid/softmax")
    if output == "probabilities" and activation not in ("sigmoid", "softmax"):
        raise ImportRefused(f"the last layer {layer!r} has activation {activation!r}: its outputs are neither "
                            "probabilities nor logits; supported: a last Dense with sigmoid, softmax or no "
                            "activation (logits, with --output logits)")
    if output == "logits" and activation != "linear":
        raise ImportRefused(f"--output logits, but the last layer {layer!r} already applies {activation!r}")


def check_labels(labels: list[str] | None, vocabulary: str | None, classes: int) -> list[str]:
    """The class names: given, the dataset's, or "0".."C-1"."""
    from rnnserve.training.data import IMDB_LABELS, REUTERS_LABELS

    if labels is None:
        labels = {"imdb": IMDB_LABELS, "reuters": REUTERS_LABELS}.get(vocabulary) or [str(i) for i in range(classes)]
    if len(labels) != classes:
        raise ImportRefused(f"{len(labels)} labels given for a model with {classes} classes")
    if len(set(labels)) != len(labels):
        raise ImportRefused("labels must differ from each other")
    return list(labels)


def preprocessing(prep: Preprocessing) -> Pipeline:
    """The user's preprocessing from one of its Keras forms (see Preprocessing)."""
    try:
        if prep.vocabulary:
            return _dataset_pipeline(prep)
        if prep.tokenizer_json:
            return _tokenizer_pipeline(Path(prep.tokenizer_json), prep.maxlen, prep.padding, prep.truncating)
        if prep.text_vectorization:
            return _vectorizer_file_pipeline(Path(prep.text_vectorization), prep.maxlen)
    except PreprocessingError as exc:
        raise ImportRefused(str(exc)) from exc
    raise ImportRefused("say how texts became ids: --vocabulary imdb|reuters (a Keras dataset), --tokenizer-json "
                        "FILE (tokenizer.to_json()) or --text-vectorization FILE")


def _dataset_pipeline(prep: Preprocessing) -> Pipeline:
    from rnnserve.training.data import DataError, load_keras_dataset

    if prep.vocabulary not in ("imdb", "reuters"):
        raise ImportRefused(f"--vocabulary {prep.vocabulary!r}: expected imdb or reuters")
    if not prep.maxlen:
        raise ImportRefused("give --maxlen: the length pad_sequences padded to")
    try:
        spec = load_keras_dataset(prep.vocabulary, prep.data_dir, num_words=prep.num_words, skip_top=prep.skip_top,
                                  pad_to=prep.maxlen, padding=prep.padding, truncating=prep.truncating).tokenizer
    except DataError as exc:
        raise ImportRefused(str(exc)) from exc
    return Pipeline(spec, None, {"kind": "keras-dataset", "dataset": prep.vocabulary, "num_words": prep.num_words,
                                 "skip_top": prep.skip_top, "maxlen": prep.maxlen, "padding": prep.padding,
                                 "truncating": prep.truncating})


def _tokenizer_pipeline(path: Path, maxlen, padding, truncating) -> Pipeline:
    if not maxlen:
        raise ImportRefused("give --maxlen: the length pad_sequences padded to")
    text = read_text(path, MAX_TEXT_BYTES, "--tokenizer-json")
    spec = from_keras_tokenizer(text, maxlen, padding, truncating)

    def ids(texts):
        from tf_keras.preprocessing.sequence import pad_sequences
        from tf_keras.preprocessing.text import tokenizer_from_json

        tokenizer = tokenizer_from_json(text)
        return pad_sequences(tokenizer.texts_to_sequences(texts), maxlen=maxlen, padding=padding,
                             truncating=truncating)

    return Pipeline(spec, ids, {"kind": "keras-tokenizer", "file": path.name, "sha256": sha256_path(path),
                                "maxlen": maxlen, "padding": padding, "truncating": truncating})


def _vectorizer_file_pipeline(path: Path, maxlen) -> Pipeline:
    source = {"kind": "text-vectorization", "in_model": False, "file": path.name, "sha256": sha256_path(path)}
    if path.suffix == ".keras":
        saved = read_keras_file(path)
        layer = next((x for x in layer_chain(saved.config) if x.get("class_name") == "TextVectorization"), None)
        if layer is None:
            raise ImportRefused(f"{path.name} holds no TextVectorization layer")
        try:
            loaded = next(x for x in load_keras_model(saved).layers if type(x).__name__ == "TextVectorization")
            return _text_vectorization_pipeline(loaded.get_config(), loaded.get_vocabulary(), maxlen, loaded, source)
        except ImportRefused as exc:  # Keras cannot load it back: the archive itself holds the layer
            config, vocabulary = archive_text_vectorization(path, layer)
            source["read_from_archive"] = " ".join(str(exc.__cause__ or exc).split())[:400]
            return _text_vectorization_pipeline(config, vocabulary, maxlen, None, source)
    try:
        saved = json.loads(read_text(path, MAX_TEXT_BYTES, "--text-vectorization"))
        config, vocabulary = saved["config"], saved["vocabulary"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ImportRefused(f"{path.name}: expected JSON {{\"config\": layer.get_config(), \"vocabulary\": "
                            f"layer.get_vocabulary()}} or a .keras file ({exc})") from None
    return _text_vectorization_pipeline(config, vocabulary, maxlen, None, source)


def _text_vectorization_pipeline(config: dict, vocabulary: list, maxlen, layer, source: dict) -> Pipeline:
    try:
        spec = from_text_vectorization(config, list(vocabulary), maxlen)
    except PreprocessingError as exc:
        raise ImportRefused(str(exc)) from exc

    def ids(texts):
        import keras

        vectorizer = layer
        if vectorizer is None:  # rebuilt from its JSON: the layer, not our reading of it, gives the reference
            known = {k: v for k, v in config.items() if k not in ("vocabulary", "vocabulary_size", "idf_weights",
                                                                    "dtype", "trainable", "name")}
            vectorizer = keras.layers.TextVectorization(**known)
            vectorizer.set_vocabulary(list(vocabulary)[2:])
        out = np.asarray(vectorizer(np.array(texts, dtype=object)))
        return out if out.shape[1] == spec.maxlen else _pad_to(out, spec.maxlen)

    described = {k: config.get(k) for k in ("standardize", "split", "max_tokens", "output_sequence_length")}
    return Pipeline(spec, ids, source | described | {"maxlen": spec.maxlen})


def _pad_to(x: np.ndarray, maxlen: int) -> np.ndarray:
    """TextVectorization without output_sequence_length pads a batch to its longest text: to maxlen, at the end."""
    out = np.zeros((len(x), maxlen), np.int64)
    out[:, :min(maxlen, x.shape[1])] = x[:, :maxlen]
    return out


def gate_inputs(gate: Gate, pipeline: Pipeline, prep: Preprocessing) -> tuple[list[str], np.ndarray | None]:
    """The gate's texts and the ids the user's own pipeline gives them (None where it has none to run)."""
    if gate.texts:
        texts = read_texts(gate.texts, gate.text_column, gate.examples)
        if pipeline.ids is None and pipeline.source.get("kind") == "keras-dataset":
            raise ImportRefused("a Keras dataset's ids exist for its own documents only: leave out --parity-texts "
                                "and give --data-dir")
        return texts, None if pipeline.ids is None else np.asarray(pipeline.ids(texts), np.int64)
    if pipeline.source.get("kind") == "keras-dataset":  # its documents and the ids load_data gives them
        from rnnserve.training.data import DataError, dataset_documents, resolve_data_dir

        try:
            root = resolve_data_dir(prep.data_dir)
            if root is None:
                raise DataError("the gate of a Keras dataset vocabulary reads the dataset's raw documents: give "
                                "--data-dir (with raw/imdb_train.csv.gz or raw/reuters_train_raw.csv.gz)")
            texts, ids = dataset_documents(pipeline.source["dataset"], root, pipeline.spec)
        except (DataError, OSError) as exc:
            raise ImportRefused(str(exc)) from exc
        return texts[:gate.examples], Tokenizer(pipeline.spec).pad(ids[:gate.examples])
    raise ImportRefused("give --parity-texts FILE (a CSV/JSONL/text file of texts like the ones the model will "
                        "see): the gate runs your own preprocessing and model on them against the package")


def read_texts(path: Path, column: str, count: int) -> list[str]:
    """The first `count` texts of --parity-texts (profiling.read_texts), its size checked first."""
    check_size(path, MAX_TEXT_BYTES, "--parity-texts")
    try:
        return profiling.read_texts(path, column, count)
    except ValueError as exc:
        raise ImportRefused(f"--parity-texts {exc}") from exc


def text_gate(user_predict: Callable[[np.ndarray | None], np.ndarray], texts: list[str], user_ids: np.ndarray | None,
              proto: onnx.ModelProto, spec: TokenizerSpec, package_spec: TokenizerSpec, dynamic: bool,
              atol: float) -> dict:
    """The package (our tokenizer, then onnxruntime) against the user's pipeline on raw texts: identical ids
    (spec: the user's padding) where the user's ids are known, then labels identical and probabilities within
    atol, else ExportError with the count of texts that differ, the first of them (its two id sequences) and the
    largest difference. user_predict: the user's probabilities from their ids."""
    if user_ids is not None:
        compare_ids(Tokenizer(spec)(texts)[0], user_ids, texts)
    expected = user_predict(user_ids)
    served = run_package(proto, Tokenizer(package_spec)(texts, dynamic=dynamic)[0])
    return {"ids_compared": user_ids is not None} | compare(expected, served, texts, atol)


def run_package(proto: onnx.ModelProto, ids: np.ndarray) -> np.ndarray:
    """The package graph's probabilities [N, C] for ids [N, T], on onnxruntime's CPU provider."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 4  # the exception carries onnxruntime's message; its log line would repeat it
    session = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return np.concatenate([session.run([OUTPUT_NAME], {INPUT_NAME: ids[i:i + 256]})[0]
                           for i in range(0, len(ids), 256)])


def compare_ids(ours: np.ndarray, theirs: np.ndarray, texts: list[str]) -> None:
    """Our padded ids must equal the user's, else ExportError with the count of texts that differ and the first
    one's two id sequences."""
    if ours.shape != theirs.shape:
        raise ExportError(f"parity gate: your ids are {list(theirs.shape)}; the package gives {list(ours.shape)}")
    differ = np.flatnonzero((ours != theirs).any(axis=1))
    if len(differ):
        i = int(differ[0])
        raise ExportError(f"parity gate: the package's tokenizer gives other ids than your preprocessing for "
                          f"{len(differ)} of {len(texts)} texts; first: text {i} {texts[i][:200]!r}\n"
                          f"  yours: {_ids_text(theirs[i])}\n  ours:  {_ids_text(ours[i])}")


def _ids_text(row: np.ndarray) -> str:
    ids = [int(i) for i in row]
    return str(ids) if len(ids) <= 60 else f"{ids[:30]} ... {ids[-30:]}"


def probabilities(raw: np.ndarray, logits: bool) -> np.ndarray:
    """A head's outputs [N, C] -> class probabilities [N, max(C, 2)]: logits through a sigmoid (one unit) or a
    softmax; one sigmoid unit p becomes [1 - p, p]."""
    raw = np.asarray(raw, np.float64)
    if logits:
        raw = 1.0 / (1.0 + np.exp(-raw)) if raw.shape[1] == 1 else softmax(raw)
    return np.concatenate([1.0 - raw, raw], axis=1) if raw.shape[1] == 1 else raw


def _string_batch(texts: list[str]):
    """Texts as a model with its TextVectorization inside takes them: rank 1 (measured: Keras 3 refuses a
    [N, 1] NumPy string array, and one model traces only one rank; tf.data batches strings as [N])."""
    return np.array(texts, dtype=object)


def compare(expected: np.ndarray, served: np.ndarray, texts: list[str], atol: float) -> dict:
    """Labels identical and |expected - served| <= atol, else ExportError with the count of texts that differ,
    the first of them and the largest difference. Texts the user's model gives NaN for (a masked average over
    no steps) are counted, not compared; the package's outputs must all be finite."""
    if not np.isfinite(served).all():
        raise ExportError(f"parity gate: the package gives outputs that are not finite for "
                          f"{int((~np.isfinite(served).all(axis=1)).sum())} of {len(texts)} texts")
    finite = np.isfinite(expected).all(axis=1)
    if not finite.any():
        raise ExportError(f"parity gate: your model gives outputs that are not finite for all {len(texts)} texts")
    diff = np.where(finite, np.abs(np.nan_to_num(expected) - served).max(axis=1), 0.0)
    disagree = finite & (np.nan_to_num(expected).argmax(1) != served.argmax(1))
    wrong = np.flatnonzero((diff > atol) | disagree)
    report = {"examples": len(texts), "max_abs_diff": float(diff.max()), "atol": atol,
              "label_disagreements": int(disagree.sum())}
    if not finite.all():
        report["yours_not_finite"] = int((~finite).sum())
    if len(wrong):
        i = int(wrong[0])
        raise ExportError(f"parity gate: {len(wrong)} of {len(texts)} texts differ (largest |yours - package| "
                          f"{report['max_abs_diff']:.3g}, allowed {atol:g}; {report['label_disagreements']} labels "
                          f"differ); first: text {i} {texts[i][:200]!r}: yours {expected[i].round(6).tolist()}, "
                          f"package {served[i].round(6).tolist()}")
    return report


def sha256_path(path: Path) -> str:
    """sha256 of a file, or of a directory's files in path order (a SavedModel)."""
    h = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]:
        with open(file, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()
