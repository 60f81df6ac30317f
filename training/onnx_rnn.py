"""Native ONNX recurrent operators (RNN, GRU, LSTM) from Keras layer weights.

tf2onnx turns SimpleRNN, GRU and every masked layer into `Loop` subgraphs, several times slower in
onnxruntime than the native operators. So the export splits the model in three: tf2onnx converts the
front (Embedding, Conv1D, pooling) and the head (Dense layers); the recurrent stack between them is
emitted here as native nodes; `onnx.compose` joins the parts. Masked models get `sequence_lens` from
the ids (`id != 0`) and expect their tokens first (post-padding), so the service can pad a batch only to
its longest text.

Keras keeps gates as [input, forget, cell, output] (LSTM) and [update, reset, candidate] (GRU) along the
last axis of kernels shaped [in, units * gates]; ONNX wants [i, o, f, c] / [z, r, h] as W[dir, gates * units, in].
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPS = {"SimpleRNN": "RNN", "GRU": "GRU", "LSTM": "LSTM"}
# Keras Bidirectional's merge modes -> the ONNX reduction over the direction axis ("concat": none).
MERGE_MODES = {"concat": None, "sum": "ReduceSum", "ave": "ReduceMean", "mul": "ReduceProd"}
ACTIVATIONS = {"tanh": "Tanh", "sigmoid": "Sigmoid", "relu": "Relu"}


class UnsupportedLayer(ValueError):
    pass


def is_recurrent(layer) -> bool:
    inner = getattr(layer, "forward_layer", layer)
    return type(inner).__name__ in OPS


def _activation(fn) -> str:
    name = getattr(fn, "__name__", str(fn))
    if name not in ACTIVATIONS:
        raise UnsupportedLayer(f"recurrent activation {name!r} has no ONNX equivalent here")
    return ACTIVATIONS[name]


def _lstm_gates(w: np.ndarray) -> np.ndarray:
    i, f, c, o = np.split(w, 4, axis=-1)
    return np.concatenate([i, o, f, c], axis=-1)


def direction_weights(layer) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str], dict]:
    """One Keras recurrent layer -> (W [G*H, F], R [G*H, H], B [2*G*H], activations, extra attributes)."""
    kind = type(layer).__name__
    cell = layer.cell
    if getattr(layer, "stateful", False) or getattr(layer, "return_state", False):
        raise UnsupportedLayer(f"{layer.name}: stateful or return_state layers are not exported")
    weights = cell.get_weights()
    kernel, recurrent = weights[0], weights[1]
    units = recurrent.shape[0]
    gates = recurrent.shape[1] // units
    bias = weights[2] if cell.use_bias else np.zeros((gates * units,), np.float32)
    attrs: dict = {}
    if kind == "LSTM":
        kernel, recurrent, w_bias = _lstm_gates(kernel), _lstm_gates(recurrent), _lstm_gates(bias)
        r_bias = np.zeros_like(w_bias)
        acts = [_activation(cell.recurrent_activation), _activation(cell.activation), _activation(cell.activation)]
    elif kind == "GRU":
        if cell.reset_after:  # bias [2, 3H]: input and recurrent biases; reset gate applied after R
            w_bias, r_bias = bias[0], bias[1]
            attrs["linear_before_reset"] = 1
        else:
            w_bias, r_bias = bias, np.zeros_like(bias)
        acts = [_activation(cell.recurrent_activation), _activation(cell.activation)]
    else:
        w_bias, r_bias = bias, np.zeros_like(bias)
        acts = [_activation(cell.activation)]
    return kernel.T, recurrent.T, np.concatenate([w_bias, r_bias]), acts, attrs


def recurrent_nodes(layers, x: str, seq_lens: str | None, prefix: str = "rnn"):
    """Nodes and initializers for a stack of recurrent layers on time-major x [T, N, F].

    Returns (nodes, initializers, output name): the Keras output of the last layer, directions
    concatenated: [N, D] for its last step, or [N, T, D] when it returns sequences.
    """
    nodes, inits = [], []
    for i, layer in enumerate(layers):
        bidirectional = hasattr(layer, "forward_layer")
        parts = [layer.forward_layer, layer.backward_layer] if bidirectional else [layer]
        merge = layer.merge_mode if bidirectional else "concat"
        if merge not in MERGE_MODES:
            raise UnsupportedLayer(f"{layer.name}: merge_mode {merge!r} gives two outputs; supported: "
                                   f"{', '.join(map(repr, MERGE_MODES))}")
        if not bidirectional and layer.go_backwards:
            raise UnsupportedLayer(f"{layer.name}: go_backwards outside Bidirectional")
        kind = type(parts[0]).__name__
        per_dir = [direction_weights(p) for p in parts]
        name = f"{prefix}{i}"
        for label, idx in (("W", 0), ("R", 1), ("B", 2)):
            arr = np.stack([d[idx] for d in per_dir]).astype(np.float32)
            inits.append(numpy_helper.from_array(arr, f"{name}/{label}"))
        units = per_dir[0][1].shape[1]
        inputs = [x, f"{name}/W", f"{name}/R", f"{name}/B", seq_lens or ""]
        nodes.append(helper.make_node(
            OPS[kind], inputs, [f"{name}/Y", f"{name}/Y_h"], name=name, hidden_size=units,
            direction="bidirectional" if bidirectional else "forward",
            activations=[a for d in per_dir for a in d[3]], **per_dir[0][4]))
        if merge != "concat":  # the directions combined element-wise: D becomes 1
            nodes += [_reduce(MERGE_MODES[merge], f"{name}/Y", f"{name}/Ym", 1, inits, prefix),
                      _reduce(MERGE_MODES[merge], f"{name}/Y_h", f"{name}/Y_hm", 0, inits, prefix)]
            y, y_h = f"{name}/Ym", f"{name}/Y_hm"
        else:
            y, y_h = f"{name}/Y", f"{name}/Y_h"
        last = i == len(layers) - 1
        if not last and not parts[0].return_sequences:
            raise UnsupportedLayer(f"{layer.name}: only the last recurrent layer may drop return_sequences")
        if not last:  # Y [T, D, N, H] -> [T, N, D*H], the next layer's input
            nodes += [helper.make_node("Transpose", [y], [f"{name}/Yt"], perm=[0, 2, 1, 3]),
                      helper.make_node("Reshape", [f"{name}/Yt", f"{prefix}/seq_shape"], [f"{name}/out"])]
            x = f"{name}/out"
        elif parts[0].return_sequences:  # Y [T, D, N, H] -> [N, T, D*H], batch-major for the head
            nodes += [helper.make_node("Transpose", [y], [f"{name}/Yt"], perm=[2, 0, 1, 3]),
                      helper.make_node("Reshape", [f"{name}/Yt", f"{prefix}/seq_shape"], [f"{prefix}/out"])]
        else:  # Y_h [D, N, H] -> [N, D*H]
            nodes += [helper.make_node("Transpose", [y_h], [f"{name}/Yht"], perm=[1, 0, 2]),
                      helper.make_node("Reshape", [f"{name}/Yht", f"{prefix}/last_shape"], [f"{prefix}/out"])]
    used = {name for node in nodes for name in node.input}
    for shape_name, shape in ((f"{prefix}/last_shape", [0, -1]), (f"{prefix}/seq_shape", [0, 0, -1])):
        if shape_name in used:
            inits.append(numpy_helper.from_array(np.array(shape, np.int64), shape_name))
    return nodes, inits, f"{prefix}/out"


POOLINGS = {"max_mean": ("max", "mean"), "mean": ("mean",)}


def _reduce(op: str, x: str, out: str, axis: int, inits: list, prefix: str):
    """A Reduce* node over one axis, keepdims (opset 13+ takes ReduceSum's axes as an input, the others' as an
    attribute until opset 18)."""
    if op != "ReduceSum":
        return helper.make_node(op, [x], [out], axes=[axis], keepdims=1)
    name = f"{prefix}/merge_axis{axis}"
    if name not in {i.name for i in inits}:
        inits.append(numpy_helper.from_array(np.array([axis], np.int64), name))
    return helper.make_node(op, [x, name], [out], keepdims=1)


def pooling_nodes(y: str, valid: str | None, out: str, kinds: tuple[str, ...] = ("max", "mean"),
                  prefix: str = "pool"):
    """Pooling over steps on y [N, T, D] -> out [N, len(kinds) * D], the kinds concatenated in order ("max",
    "mean"): MaxMeanPooling (training/layers.py) is both, Keras's GlobalAveragePooling1D with a mask is "mean".
    Over the steps where valid [N, T] (bool) holds, or over every step; a row without a valid step gives zeros."""
    if valid is None:
        ops = {"max": "ReduceMax", "mean": "ReduceMean"}
        nodes = [helper.make_node(ops[k], [y], [f"{prefix}/{k}"], axes=[1], keepdims=0) for k in kinds]
        nodes.append(helper.make_node("Concat", [f"{prefix}/{k}" for k in kinds], [out], axis=1))
        return nodes, []
    consts = {"axis1": np.array([1], np.int64), "axis2": np.array([2], np.int64)}
    if "mean" in kinds:
        consts["one"] = np.array(1.0, np.float32)
    if "max" in kinds:
        consts |= {"zero": np.array(0.0, np.float32), "ninf": np.array(-np.inf, np.float32)}
    inits = [numpy_helper.from_array(v, f"{prefix}/{k}") for k, v in consts.items()]
    c = {k: f"{prefix}/{k}" for k in consts}
    n = {k: f"{prefix}/{k}" for k in ("valid3", "keep", "count", "sum", "denominator", "mean", "masked", "highest",
                                      "any", "max")}
    nodes = [
        helper.make_node("Unsqueeze", [valid, c["axis2"]], [n["valid3"]]),  # [N, T, 1]
        helper.make_node("Cast", [n["valid3"]], [n["keep"]], to=TensorProto.FLOAT),
        helper.make_node("ReduceSum", [n["keep"], c["axis1"]], [n["count"]], keepdims=0),  # [N, 1]
    ]
    if "mean" in kinds:
        nodes += [
            helper.make_node("Mul", [y, n["keep"]], [f"{prefix}/kept"]),
            helper.make_node("ReduceSum", [f"{prefix}/kept", c["axis1"]], [n["sum"]], keepdims=0),
            helper.make_node("Max", [n["count"], c["one"]], [n["denominator"]]),
            helper.make_node("Div", [n["sum"], n["denominator"]], [n["mean"]]),
        ]
    if "max" in kinds:
        nodes += [
            helper.make_node("Where", [n["valid3"], y, c["ninf"]], [n["masked"]]),
            helper.make_node("ReduceMax", [n["masked"]], [n["highest"]], axes=[1], keepdims=0),
            helper.make_node("Greater", [n["count"], c["zero"]], [n["any"]]),
            helper.make_node("Where", [n["any"], n["highest"], c["zero"]], [n["max"]]),
        ]
    nodes.append(helper.make_node("Concat", [n[k] for k in kinds], [out], axis=1))
    return nodes, inits


def attach_recurrent_stack(front: onnx.ModelProto, front_output: str, layers, masked: bool,
                           ids_input: str, out_name: str = "rnn_out", pooling: str | None = None) -> onnx.ModelProto:
    """Append the recurrent stack (and a pooling over its steps, a key of POOLINGS, that reads the mask) to the
    front graph; the model's only output becomes out_name."""
    g = front.graph
    nodes = [helper.make_node("Transpose", [front_output], ["rnn/x"], perm=[1, 0, 2])]
    inits = []
    seq_lens = None
    if masked:  # Keras mask_zero: id 0 is padding; tokens come first (post-padded), so length = count
        inits.append(numpy_helper.from_array(np.array(0, np.int64), "rnn/zero"))
        inits.append(numpy_helper.from_array(np.array([1], np.int64), "rnn/axis1"))
        nodes += [helper.make_node("Greater", [ids_input, "rnn/zero"], ["rnn/valid"]),
                  helper.make_node("Cast", ["rnn/valid"], ["rnn/valid_i"], to=TensorProto.INT32),
                  helper.make_node("ReduceSum", ["rnn/valid_i", "rnn/axis1"], ["rnn/lens"], keepdims=0)]
        seq_lens = "rnn/lens"
    rnn_nodes, rnn_inits, out = recurrent_nodes(layers, "rnn/x", seq_lens)
    nodes += rnn_nodes
    if pooling:
        pool_nodes, pool_inits = pooling_nodes(out, "rnn/valid" if masked else None, "pool/out", POOLINGS[pooling])
        nodes += pool_nodes
        inits += pool_inits
        out = "pool/out"
    nodes.append(helper.make_node("Identity", [out], [out_name]))
    g.node.extend(nodes)
    g.initializer.extend(inits + rnn_inits)
    del g.output[:]
    g.output.append(helper.make_tensor_value_info(out_name, TensorProto.FLOAT, None))
    return front


def stepwise_lm(model, opset: int) -> onnx.ModelProto:
    """A Keras character LM (Embedding, recurrent layers returning sequences, Dense softmax) as a step-wise
    graph: `input_ids` [N, T] (T >= 1) and each layer's state (`state_in_i` [1, N, H], LSTMs also `cell_in_i`)
    -> `logits` [N, V] after the last step and the states after it (`state_out_i`, `cell_out_i`). A prompt
    runs in one call; generation then feeds one character at a time, never recomputing the prefix."""
    layers = [layer for layer in model.layers if type(layer).__name__ not in ("InputLayer", "Dropout")]
    embedding, *stack, dense = layers
    if (type(embedding).__name__ != "Embedding" or type(dense).__name__ != "Dense" or not stack
            or getattr(dense.activation, "__name__", "") != "softmax"):
        raise UnsupportedLayer("a language model is Embedding, recurrent layers, Dense with softmax")
    inits = [numpy_helper.from_array(embedding.get_weights()[0].astype(np.float32), "lm/embedding"),
             numpy_helper.from_array(np.array([0], np.int64), "lm/axis0")]
    if len(stack) > 1:
        inits.append(numpy_helper.from_array(np.array([1], np.int64), "lm/axis1"))
    nodes = [helper.make_node("Gather", ["lm/embedding", "input_ids"], ["lm/emb"]),  # [N, T, E]
             helper.make_node("Transpose", ["lm/emb"], ["lm/x0"], perm=[1, 0, 2])]  # [T, N, E]
    inputs = [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["N", "T"])]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", dense.units])]
    x = "lm/x0"
    for i, layer in enumerate(stack):
        if not is_recurrent(layer) or hasattr(layer, "forward_layer") or not layer.return_sequences:
            raise UnsupportedLayer(f"{layer.name}: a language model's layers are one-way, returning sequences")
        kind = type(layer).__name__
        w, r, b, acts, attrs = direction_weights(layer)
        for label, arr in (("W", w), ("R", r), ("B", b)):
            inits.append(numpy_helper.from_array(arr[None].astype(np.float32), f"lm/{i}/{label}"))
        names = ["state"] + (["cell"] if kind == "LSTM" else [])
        for n in names:
            inputs.append(helper.make_tensor_value_info(f"{n}_in_{i}", TensorProto.FLOAT, [1, "N", layer.units]))
            outputs.append(helper.make_tensor_value_info(f"{n}_out_{i}", TensorProto.FLOAT, [1, "N", layer.units]))
        node_inputs = [x, f"lm/{i}/W", f"lm/{i}/R", f"lm/{i}/B", "", f"state_in_{i}"]
        node_inputs += [f"cell_in_{i}"] if kind == "LSTM" else []
        nodes.append(helper.make_node(OPS[kind], node_inputs, [f"lm/{i}/Y"] + [f"{n}_out_{i}" for n in names],
                                      name=f"lm/{i}", hidden_size=layer.units, direction="forward",
                                      activations=acts, **attrs))
        if i < len(stack) - 1:  # Y [T, 1, N, H] -> [T, N, H], the next layer's input
            nodes.append(helper.make_node("Squeeze", [f"lm/{i}/Y", "lm/axis1"], [f"lm/{i}/out"]))
            x = f"lm/{i}/out"
    kernel, bias = dense.get_weights()
    inits += [numpy_helper.from_array(kernel.astype(np.float32), "lm/dense/W"),
              numpy_helper.from_array(bias.astype(np.float32), "lm/dense/b")]
    last = f"state_out_{len(stack) - 1}"  # the top layer's output after the last step: [1, N, H]
    nodes += [helper.make_node("Squeeze", [last, "lm/axis0"], ["lm/last"]),
              helper.make_node("MatMul", ["lm/last", "lm/dense/W"], ["lm/dense"]),
              helper.make_node("Add", ["lm/dense", "lm/dense/b"], ["logits"])]
    graph = helper.make_graph(nodes, "char_lm", inputs, outputs, inits)
    opsets = [helper.make_opsetid("", opset)]
    # The lowest IR version the opset needs, not the installed onnx's newest: onnxruntime 1.31 refused IR 14.
    return helper.make_model(graph, opset_imports=opsets, ir_version=helper.find_min_ir_version_for(opsets))


# Ops whose output at a step depends on later steps (or on the whole sequence): no step-wise graph then.
WHOLE_SEQUENCE_OPS = ("Conv", "MaxPool", "AveragePool", "ReduceMean", "ReduceMax", "ReduceSum", "GlobalMaxPool",
                      "GlobalAveragePool", "Loop", "Scan")


def stepwise_sequences(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[dict]] | None:
    """A numeric-sequence graph (`sequences` [N, T, F] in) made step-wise, as the language model's is: each
    recurrent node's initial state a graph input (`state_in_i` [1, N, H], LSTMs also `cell_in_i`) and its
    state after the last step an output (`state_out_i`, `cell_out_i`), any T. Running a sequence in chunks,
    each from the state the one before left, gives what the whole sequence gives (export's stepwise_gate
    checks it). None for graphs whose steps depend on later steps: a bidirectional or masked layer, a Conv1D
    or pooling front, pooling over the steps. (model, state pairs as the package's `state`)."""
    if any(node.op_type in WHOLE_SEQUENCE_OPS for node in model.graph.node):
        return None
    recurrent = [node for node in model.graph.node if node.op_type in OPS.values()]
    for node in recurrent:
        direction = next((a.s.decode() for a in node.attribute if a.name == "direction"), "forward")
        if direction != "forward" or (len(node.input) > 4 and node.input[4]):
            return None
    if not recurrent:
        return None
    step = onnx.ModelProto()
    step.CopyFrom(model)
    g = step.graph
    states = []
    for i, node in enumerate(n for n in g.node if n.op_type in OPS.values()):
        hidden = next(a.i for a in node.attribute if a.name == "hidden_size")
        pairs = [("state", 5, 1)] + ([("cell", 6, 2)] if node.op_type == "LSTM" else [])
        inputs, outputs = list(node.input), list(node.output)
        for kind, at_in, at_out in pairs:
            inputs += [""] * (at_in + 1 - len(inputs))
            outputs += [""] * (at_out + 1 - len(outputs))
            inputs[at_in], outputs[at_out] = f"{kind}_in_{i}", outputs[at_out] or f"step/{i}/{kind}"
            g.input.append(helper.make_tensor_value_info(f"{kind}_in_{i}", TensorProto.FLOAT, [1, "N", hidden]))
            g.output.append(helper.make_tensor_value_info(f"{kind}_out_{i}", TensorProto.FLOAT, [1, "N", hidden]))
            g.node.append(helper.make_node("Identity", [outputs[at_out]], [f"{kind}_out_{i}"]))
            states.append({"input": f"{kind}_in_{i}", "output": f"{kind}_out_{i}", "shape": [1, None, hidden]})
        node.input[:] = inputs
        del node.output[:]
        node.output.extend(outputs)
    for value in (g.input[0], g.output[0]):  # any number of steps in, and per step out
        dims = value.type.tensor_type.shape.dim
        if len(dims) == 3:
            dims[1].ClearField("dim_value")
            dims[1].dim_param = "T"
    del g.value_info[:]  # shapes inferred for a fixed T
    onnx.checker.check_model(step)
    return step, states


def unique_opsets(model: onnx.ModelProto) -> onnx.ModelProto:
    """One opset import per domain, its highest version (onnx.compose.merge_models keeps both models' lists,
    so merged models named each domain twice, which onnxruntime's quantizer refuses). Changes `model`."""
    versions: dict[str, int] = {}
    for opset in model.opset_import:
        versions[opset.domain] = max(versions.get(opset.domain, 0), opset.version)
    del model.opset_import[:]
    model.opset_import.extend(helper.make_opsetid(domain, version) for domain, version in versions.items())
    return model


def loop_ops(model: onnx.ModelProto) -> list[str]:
    """Loop/Scan nodes anywhere in the graph (these mean a recurrent layer was not made native)."""
    found = []

    def walk(graph):
        for node in graph.node:
            if node.op_type in ("Loop", "Scan"):
                found.append(node.name or node.op_type)
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    walk(attr.g)

    walk(model.graph)
    return found
