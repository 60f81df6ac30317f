"""The comparison point: a plain FastAPI + onnxruntime endpoint, same tokenizer, no batching.

    python bench/baseline_server.py models/imdb-lstm/1 --port 8001
"""

import argparse

import onnxruntime as ort
import uvicorn
from fastapi import FastAPI
from pydantic import BaseModel

from service.package import read_package
from service.tokenizer import Tokenizer


class Body(BaseModel):
    text: str


def build(package_dir: str) -> FastAPI:
    pkg = read_package(package_dir)
    tok = Tokenizer(pkg.tokenizer)
    sess = ort.InferenceSession(str(pkg.path / "model.onnx"), providers=["CPUExecutionProvider"])
    app = FastAPI()

    @app.get("/health/ready")
    def ready():
        return {"status": "ready"}

    @app.post("/v1/models/{name}/predict")
    def predict(name: str, body: Body):
        x, _ = tok([body.text])
        p = sess.run(["probabilities"], {"input_ids": x})[0][0]
        return {"label": pkg.labels[int(p.argmax())], "score": float(p.max())}

    return app


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("package")
    ap.add_argument("--port", type=int, default=8001)
    args = ap.parse_args()
    uvicorn.run(build(args.package), host="127.0.0.1", port=args.port, log_level="warning", access_log=False)
