"""Import an ONNX recurrent text classifier made elsewhere (e.g. PyTorch's `torch.onnx.export` of an
nn.Embedding + nn.LSTM/nn.GRU + nn.Linear) into a model package. Its own nodes run as they are; the graph gets
the package's names (`input_ids` int64 [N, T] -> `probabilities` float32 [N, C]) around them, with a Cast where
it takes int32 ids and a sigmoid/softmax where it gives logits.

Its preprocessing: a vocabulary file with the rules spelled out as flags (Preprocessing.vocab_file), or one of
the Keras forms. The gate compares the user's reference ids and/or outputs for the gate's texts where given
(Gate.reference, a .npz); without them only shapes and the run are checked, and the report says so.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, external_data_helper, helper

from rnnserve.service.core.package import INPUT_NAME, OUTPUT_NAME
from rnnserve.service.core.tokenizer import Tokenizer
from rnnserve.training.export import ExportError, write_package
from rnnserve.training.importer import (
    Gate,
    ImportRefused,
    Pipeline,
    Preprocessing,
    check_common,
    check_labels,
    check_vocabulary,
    classifier_metadata,
    compare,
    compare_ids,
    preprocessing,
    probabilities,
    profile_reference,
    read_texts,
    run_package,
    sha256_path,
)
from rnnserve.training.untrusted import MAX_MODEL_BYTES, MAX_TEXT_BYTES, check_size, open_zip, read_text, size_text
from rnnserve.training.vocabularies import hf_tokenizer_spec, vocab_source, vocab_spec

NO_REFERENCE = """an ONNX model carries no preprocessing: give --reference reference.npz, your own ids and/or \
outputs for the --parity-texts, so the gate can compare the package with your notebook. In the notebook:
    ids = torch.tensor([encode(text) for text in texts])  # your own tokenizer and padding, texts in file order
    with torch.no_grad(): outputs = model(ids)
    numpy.savez("reference.npz", ids=ids.numpy(), outputs=outputs.numpy())
or pass --accept-unchecked to write a package whose ids and outputs nothing compared with yours"""
ID_TYPES = {TensorProto.INT64: "int64", TensorProto.INT32: "int32"}


def import_onnx(model_path: str | Path, models_dir: str | Path, name: str, prep: Preprocessing, gate: Gate, *,
                version: int = 1, labels: list[str] | None = None, output: str = "probabilities",
                overwrite: bool = False) -> Path:
    """Import an ONNX classifier (ids [N, T] -> probabilities or logits [N, C], the batch axis dynamic) into
    MODELS/NAME/VERSION. Raises ImportRefused (with the reason) or ExportError (the gate)."""
    model_path = Path(model_path)
    check_common(model_path, models_dir, name, version, output, prep, overwrite)
    if not gate.reference and not gate.accept_unchecked:
        raise ImportRefused(NO_REFERENCE)
    model = read_onnx(model_path)
    ids_input, lengths_input, steps = _check_input(model)
    out, classes = _check_output(model)
    maxlen = prep.maxlen or steps
    if steps and maxlen != steps:
        raise ImportRefused(f"the model takes {steps} ids a text; --maxlen is {maxlen}")
    pipeline = _preprocessing(replace(prep, maxlen=maxlen))
    pipeline_spec, described = pipeline.spec, pipeline.source
    labels = check_labels(labels, prep.vocabulary, max(classes, 2))
    rows = _embedding_rows(model, ids_input.name)
    if rows:
        check_vocabulary(pipeline_spec, rows, "the model's embedding (the Gather on its ids)",
                         allow_unused_rows=prep.allow_unused_rows)
    proto = package_graph(model, ids_input, out, output == "logits", lengths_input, pipeline_spec.pad_id)
    texts = read_texts(gate.texts, gate.text_column, gate.examples) if gate.texts else None
    if texts is None:
        raise ImportRefused("give --parity-texts FILE: the package runs on them, and with --reference (your ids "
                            "and/or outputs for those texts) the gate compares them")
    parity = onnx_gate(proto, pipeline, texts, gate, output == "logits")
    source = {"kind": "imported", "file": model_path.name, "format": "onnx", "sha256": sha256_path(model_path),
              "output": output, "preprocessing": described,
              "producer": f"{model.producer_name} {model.producer_version}".strip()}
    metadata = classifier_metadata(pipeline_spec, labels, False, parity, source,
                                   {"op_types": sorted({n.op_type for n in model.graph.node}),
                                    "vocab_size": rows})
    versions = {m.__name__: m.__version__ for m in (onnx, __import__("onnxruntime"))}
    return write_package(models_dir, name, version, proto, {"tokenizer.json": pipeline_spec.to_json()}, metadata,
                         versions, overwrite=overwrite, reference=profile_reference(gate, texts))


def read_onnx(path: Path) -> onnx.ModelProto:
    """The model with any external data inlined (a package is one model.onnx: the server loads graphs from
    verified bytes), checked: every file it reads within the limits and the model's folder, every operator from
    the standard domain or a function the model defines (a custom domain's operators are code from a library
    outside the model). ImportRefused with the reason."""
    check_size(path, MAX_MODEL_BYTES, "model file")
    try:
        model = onnx.load(path, load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is refused with onnx's reason
        raise ImportRefused(f"{path.name} is not a valid ONNX model: {exc}") from exc
    _check_domains(model)
    folder = path.resolve().parent
    total = path.stat().st_size
    for tensor in _tensors(model):
        if not external_data_helper.uses_external_data(tensor):
            continue
        info = external_data_helper.ExternalDataInfo(tensor)
        data = (folder / info.location).resolve()
        if not data.is_relative_to(folder) or not data.is_file():
            raise ImportRefused(f"{path.name}: tensor {tensor.name!r} keeps its data in {info.location!r}, which is "
                                "not a file in the model's folder; refused")
        total += info.length or data.stat().st_size
        if total > MAX_MODEL_BYTES:
            raise ImportRefused(f"{path.name} and its external data are over the {size_text(MAX_MODEL_BYTES)} the "
                                "import reads")
    try:
        external_data_helper.load_external_data_for_model(model, str(folder))
        onnx.checker.check_model(model)
    except Exception as exc:  # noqa: BLE001 - onnx's reason: a short or unreadable data file, an invalid graph
        raise ImportRefused(f"{path.name} is not a valid ONNX model: {exc}") from exc
    return model


def _check_domains(model: onnx.ModelProto) -> None:
    local = {(f.domain, f.name) for f in model.functions}
    for graph in _graphs(model):
        for node in graph.node:
            if node.domain not in ("", "ai.onnx") and (node.domain, node.op_type) not in local:
                raise ImportRefused(f"node {node.name or node.op_type!r} is operator {node.op_type!r} of the custom "
                                    f"domain {node.domain!r}: its code is a library outside the model; supported: "
                                    "the standard ONNX operators")


def _graphs(model: onnx.ModelProto):
    """The main graph, the model's functions and every subgraph (Loop, If, Scan bodies) in them."""
    graphs = [model.graph, *model.functions]
    while graphs:
        graph = graphs.pop()
        yield graph
        for node in graph.node:
            graphs += [a.g for a in node.attribute if a.HasField("g")] + [g for a in node.attribute for g in a.graphs]


def _tensors(model: onnx.ModelProto):
    """Every tensor the model stores: initializers and node attributes, subgraphs included."""
    for graph in _graphs(model):
        yield from getattr(graph, "initializer", [])
        for node in graph.node:
            for attribute in node.attribute:
                if attribute.HasField("t"):
                    yield attribute.t
                yield from attribute.tensors


def _preprocessing(prep: Preprocessing) -> Pipeline:
    if prep.hf_tokenizer:
        path = Path(prep.hf_tokenizer)
        spec = hf_tokenizer_spec(path, prep)

        def library_ids(texts: list[str]) -> np.ndarray:  # the library itself, then the flags' padding
            from tokenizers import Tokenizer as HFTokenizer

            encoded = HFTokenizer.from_str(read_text(path, MAX_TEXT_BYTES, "--hf-tokenizer")).encode_batch(texts)
            return Tokenizer(spec).pad([e.ids for e in encoded])

        return Pipeline(spec, library_ids, {"kind": "hf-tokenizers", "file": path.name, "sha256": sha256_path(path),
                                            "maxlen": spec.maxlen, "padding": spec.padding,
                                            "truncating": spec.truncating})
    if not prep.vocab_file:
        return preprocessing(prep)
    return Pipeline(vocab_spec(prep), None,
                    vocab_source(prep) | {"sha256": sha256_path(Path(prep.vocab_file))})


def _graph_inputs(model: onnx.ModelProto) -> list:
    initializers = {i.name for i in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in initializers]


def _dims(value) -> list:
    return [d.dim_value if d.HasField("dim_value") else None for d in value.type.tensor_type.shape.dim]


def _check_input(model: onnx.ModelProto):
    """(ids, lengths or None, steps): the ids [batch, steps], and where the graph takes one (PyTorch's
    pack_padded_sequence) the lengths [batch]."""
    inputs = _graph_inputs(model)
    ids = [i for i in inputs if len(_dims(i)) == 2]
    lengths = [i for i in inputs if len(_dims(i)) == 1]
    if len(ids) != 1 or len(inputs) - len(ids) > 1 or len(lengths) != len(inputs) - 1:
        raise ImportRefused(f"the model takes {len(inputs)} inputs ({[i.name for i in inputs]}); a text classifier "
                            "takes the ids [batch, steps], and may take their lengths [batch]")
    (ids,) = ids
    for value in (ids, *lengths):
        kind, dims = value.type.tensor_type.elem_type, _dims(value)
        if kind not in ID_TYPES:
            raise ImportRefused(f"input {value.name!r} is {TensorProto.DataType.Name(kind).lower()} {dims}; expected "
                                "ids int64 or int32 [batch, steps] (and lengths [batch])")
        if dims[0] is not None:
            raise ImportRefused(f"input {value.name!r} has a fixed batch axis ({dims[0]}): the server batches "
                                "requests. Export with a dynamic batch axis, e.g. torch.onnx.export(..., "
                                f"dynamic_axes={{{value.name!r}: {{0: 'batch'}}}})")
    return ids, (lengths[0] if lengths else None), _dims(ids)[1]


def _check_output(model: onnx.ModelProto):
    out = model.graph.output[0]
    kind, dims = out.type.tensor_type.elem_type, _dims(out)
    if kind != TensorProto.FLOAT or len(dims) != 2 or not dims[1]:
        raise ImportRefused(f"output {out.name!r} is {TensorProto.DataType.Name(kind).lower()} {dims}; expected "
                            "float32 [batch, classes] with the classes fixed")
    return out, dims[1]


def _embedding_rows(model: onnx.ModelProto, ids: str) -> int | None:
    """Rows of the embedding table the ids index: the first Gather of a 2-D initializer whose indices are
    computed from the ids (directly in PyTorch's exports; through Keras's negative-index Where in tf2onnx's),
    when there is one."""
    tables = {i.name: list(i.dims) for i in model.graph.initializer if len(i.dims) == 2}
    from_ids = {ids}
    for node in model.graph.node:  # nodes are in topological order (onnx.checker)
        if node.op_type == "Gather" and node.input[0] in tables and node.input[1] in from_ids:
            return int(tables[node.input[0]][0])
        if any(name in from_ids for name in node.input):
            from_ids.update(node.output)
    return None


def package_graph(model: onnx.ModelProto, ids, out, logits: bool, lengths=None, pad_id: int = 0) -> onnx.ModelProto:
    """The model with the package's names: `input_ids` int64 in (cast to the model's int32 where it takes
    those), `probabilities` [N, C] out (a sigmoid or softmax after logits; one unit p widened to [1 - p, p]).
    A lengths input is computed in the graph from the ids: the count of ids that are not pad_id, each row's."""
    proto = onnx.ModelProto()
    proto.CopyFrom(model)
    g = proto.graph
    nodes = []
    if lengths is not None:
        g.initializer.extend([onnx.numpy_helper.from_array(np.array(pad_id, np.int64), "import/pad_id"),
                              onnx.numpy_helper.from_array(np.array([1], np.int64), "import/steps_axis")])
        nodes += [helper.make_node("Equal", [INPUT_NAME, "import/pad_id"], ["import/is_pad"]),
                  helper.make_node("Not", ["import/is_pad"], ["import/is_id"]),
                  helper.make_node("Cast", ["import/is_id"], ["import/id_count"], to=TensorProto.INT64),
                  helper.make_node("ReduceSum", ["import/id_count", "import/steps_axis"], ["import/lengths"],
                                   keepdims=0),
                  helper.make_node("Cast", ["import/lengths"], [lengths.name],
                                   to=lengths.type.tensor_type.elem_type)]
        g.input.remove(next(i for i in g.input if i.name == lengths.name))
    if ids.name != INPUT_NAME or ids.type.tensor_type.elem_type != TensorProto.INT64:
        inner = "import/ids"
        cast_to = ids.type.tensor_type.elem_type
        nodes.append(helper.make_node("Cast", [INPUT_NAME], [inner], to=cast_to) if cast_to != TensorProto.INT64
                     else helper.make_node("Identity", [INPUT_NAME], [inner]))
        for node in g.node:
            node.input[:] = [inner if name == ids.name else name for name in node.input]
        g.input.remove(next(i for i in g.input if i.name == ids.name))
        g.input.insert(0, helper.make_tensor_value_info(INPUT_NAME, TensorProto.INT64, ["N", "T"]))
    if nodes:  # protobuf's repeated fields take no slice assignment
        existing = list(g.node)
        del g.node[:]
        g.node.extend(nodes + existing)
    classes = _dims(out)[1]
    last = out.name
    if last == OUTPUT_NAME:  # the name the package's last node gives: the model's own output is renamed
        last = "import/out"
        for node in g.node:
            node.output[:] = [last if name == OUTPUT_NAME else name for name in node.output]
            node.input[:] = [last if name == OUTPUT_NAME else name for name in node.input]
    tail = []
    if logits:
        tail.append(helper.make_node("Sigmoid" if classes == 1 else "Softmax", [last], ["import/p"],
                                     **({} if classes == 1 else {"axis": -1})))
        last = "import/p"
    if classes == 1:  # [N, 1] -> [N, 2] = [1 - p, p]
        g.initializer.append(onnx.numpy_helper.from_array(np.array(1.0, np.float32), "import/one"))
        tail += [helper.make_node("Sub", ["import/one", last], ["import/q"]),
                 helper.make_node("Concat", ["import/q", last], ["import/pp"], axis=1)]
        last = "import/pp"
    tail.append(helper.make_node("Identity", [last], [OUTPUT_NAME]))
    g.node.extend(tail)
    del g.output[:]
    g.output.append(helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["N", max(classes, 2)]))
    onnx.checker.check_model(proto)
    return proto


def onnx_gate(proto: onnx.ModelProto, pipeline: Pipeline, texts: list[str], gate: Gate, logits: bool) -> dict:
    """Run the package on the texts; the ids of the pipeline's own library where it has one (a Hugging Face
    tokenizer); with gate.reference (.npz: `ids` [N, T] and/or `outputs` [N, C], the model's own outputs for the
    same texts in order), ids identical and probabilities within atol."""
    spec = pipeline.spec
    ids, _ = Tokenizer(spec)(texts)
    try:
        served = run_package(proto, ids)
    except Exception as exc:  # noqa: BLE001 - onnxruntime's own reason (an unsupported op, a shape) is the message
        raise ImportRefused(f"onnxruntime cannot run the model on the texts' ids (0..{int(ids.max())}; a "
                            f"vocabulary larger than the model's embedding fails here): {exc}") from exc
    if not np.isfinite(served).all():
        raise ExportError(f"the package gives outputs that are not finite for {len(texts)} texts")
    if pipeline.ids is not None:
        compare_ids(ids, np.asarray(pipeline.ids(texts), np.int64), texts)
    if not gate.reference:
        return {"examples": len(texts),
                "checked": "shapes only: no --reference ids or outputs given (--accept-unchecked)"}
    try:
        open_zip(gate.reference, {}, MAX_TEXT_BYTES, "--reference").close()  # an .npz is a zip: sizes first
        with np.load(gate.reference) as ref:
            theirs = {k: ref[k] for k in ("ids", "outputs") if k in ref.files}
    except (OSError, ValueError) as exc:
        raise ImportRefused(f"cannot read --reference {gate.reference}: {exc}") from exc
    if not theirs:
        raise ImportRefused(f"--reference {gate.reference} holds neither `ids` nor `outputs`")
    report: dict = {"ids_compared": "ids" in theirs, "outputs_compared": "outputs" in theirs}
    if "ids" in theirs:
        compare_ids(ids, np.asarray(theirs["ids"], np.int64), texts)
    if "outputs" in theirs:
        outputs = np.asarray(theirs["outputs"])
        if len(outputs) != len(texts):
            raise ExportError(f"--reference has {len(outputs)} outputs for {len(texts)} texts")
        report |= compare(probabilities(outputs, logits), served, texts, gate.atol)
    return report
