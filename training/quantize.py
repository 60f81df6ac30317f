"""INT8 packages: onnxruntime's dynamic quantization of a text classifier's package, held to an accuracy gate.

    rnnserve-train quantize models/imdb-lstm/1 --name imdb-lstm-int8 [--max-loss 0.3]

onnxruntime quantizes, per its dynamic quantization (onnxruntime.quantization.quantize_dynamic): LSTM weights
(DynamicQuantizeLSTM), the embedding (Gather of an int8 table) and Dense layers (MatMulInteger). It has no
quantized GRU or SimpleRNN: those layers stay float, and only their embedding and Dense layers shrink.

The gate: the float and INT8 models' accuracy on the package's own validation split (the last
`validation_split` of its training split, as Keras held it out; its training split when it kept none),
refused past `max_loss` points with the figures. The INT8 package's test metrics are measured on the test
split, as every final package's are.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization import QuantType, quantize_dynamic

from rnnserve.service.core.package import MANIFEST, PackageError, PackageMetadata, Task, read_package, seal
from rnnserve.service.core.profile import PROFILE
from rnnserve.service.core.tokenizer import Tokenizer
from rnnserve.training.config import TrainConfig
from rnnserve.training.metrics import classification_metrics
from rnnserve.training.onnx_rnn import unique_opsets
from rnnserve.training.profiling import training_texts, write_profile
from rnnserve.training.train import load_dataset

QUANTIZED_OPS = ["LSTM", "MatMul", "Gather"]  # what onnxruntime's dynamic quantization has integer kernels for


class QuantizeError(Exception):
    pass


def quantize_package(package_dir: str | Path, models_dir: str | Path, name: str, version: int = 1,
                     data_dir: str | Path | None = None, max_loss: float = 0.3, overwrite: bool = False) -> Path:
    """Write models_dir/name/version: the package with its model quantized to INT8. Raises QuantizeError when
    the package is no text classifier, the target exists (without overwrite) or the gate refuses it."""
    try:
        source = read_package(package_dir)
    except PackageError as exc:
        raise QuantizeError(f"{package_dir}: {exc}") from None
    meta = source.metadata
    if meta.task != Task.TEXT_CLASSIFICATION:
        raise QuantizeError(f"{source.path} is a {meta.task} package; INT8 export takes text classifiers")
    target = Path(models_dir) / name / str(version)
    if target.exists() and not overwrite:
        raise QuantizeError(f"{target} exists (pass --overwrite to replace it)")
    cfg = TrainConfig.from_dict({k: v for k, v in meta.training.items() if k in TrainConfig.__dataclass_fields__})
    ds = load_dataset(cfg, data_dir)
    tokenizer = Tokenizer(source.tokenizer)
    # Its training's validation split; a run without one is gated on its training split (never the test's)
    fit = int(len(ds.x_train) * (1.0 - cfg.validation_split))
    split = "validation" if fit < len(ds.x_train) else "training"
    fit = fit if split == "validation" else 0
    x_val = tokenizer.pad(ds.x_train[fit:], dynamic=meta.dynamic_length)
    y_val = np.asarray(ds.y_train[fit:])
    with tempfile.TemporaryDirectory() as tmp:
        staged = Path(tmp) / name / str(version)
        shutil.copytree(source.path, staged)
        model_path = staged / "model.onnx"
        _quantize(source.path / "model.onnx", model_path)
        accuracy = [float((predict_package(path, meta, x_val).argmax(1) == y_val).mean())
                    for path in (source.path / "model.onnx", model_path)]
        loss = (accuracy[0] - accuracy[1]) * 100
        gate = {"split": split, "examples": int(len(y_val)), "accuracy_float": round(accuracy[0], 6),
                "accuracy_int8": round(accuracy[1], 6), "loss_points": round(loss, 4), "max_loss_points": max_loss}
        if loss > max_loss:
            raise QuantizeError(f"INT8 loses {loss:.2f} points of {split} accuracy ({accuracy[0]:.2%} -> "
                                f"{accuracy[1]:.2%} on {len(y_val)} examples); the limit is {max_loss}")
        model = onnx.load(model_path)
        test = classification_metrics(ds.y_test, predict_package(model_path, meta,
                                                          tokenizer.pad(ds.x_test, dynamic=meta.dynamic_length)))
        data = meta.model_dump(mode="json")
        data.update(name=name, version=version, created_at=datetime.now(UTC).isoformat(timespec="seconds"),
                    metrics={**meta.metrics, "test": test},
                    onnx={**data["onnx"], "sha256": hashlib.sha256(model_path.read_bytes()).hexdigest(),
                          "op_types": sorted({n.op_type for n in model.graph.node})},
                    quantization={"weights": "int8", "method": "onnxruntime dynamic quantization",
                                  "quantized": dict(Counter(n.op_type for n in model.graph.node
                                                            if n.op_type in ("DynamicQuantizeLSTM", "MatMulInteger",
                                                                             "DequantizeLinear"))),
                                  "source": {"name": meta.name, "version": meta.version, "sha256": meta.onnx.sha256},
                                  "validation_gate": gate})
        PackageMetadata.model_validate(data)  # what the server will read
        (staged / "metadata.json").write_text(json.dumps(data, indent=2) + "\n")
        (staged / MANIFEST).unlink()  # the source's
        # The drift profile of the INT8 model's own predictions (the source's, copied, is the float model's)
        (staged / PROFILE).unlink(missing_ok=True)
        if (reference := training_texts(cfg.dataset, data_dir, cfg.text_column, cfg.test_split)) is not None:
            write_profile(staged, *reference)
        seal(staged)
        read_package(staged)
        if target.exists():
            shutil.rmtree(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(staged), target)
    return target


def predict_package(model: Path, meta: PackageMetadata, x: np.ndarray, batch_size: int = 1024) -> np.ndarray:
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    return np.concatenate([session.run([meta.output.name], {meta.input.name: x[i:i + batch_size]})[0]
                           for i in range(0, len(x), batch_size)])


def _quantize(src: Path, dst: Path) -> None:
    model = unique_opsets(onnx.load(src))  # packages exported before their opsets were made unique
    with tempfile.TemporaryDirectory() as tmp:
        merged = Path(tmp) / "float.onnx"
        onnx.save(model, merged)
        quantize_dynamic(merged, dst, op_types_to_quantize=QUANTIZED_OPS, weight_type=QuantType.QInt8)
