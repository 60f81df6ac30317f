"""The comparison point: what a user would otherwise write. A plain FastAPI + onnxruntime endpoint (sync
`def`, no batching) with the pure-Python reference tokenizer (the user has no compiled one), on uvicorn.

    python -m bench.baseline_server models/imdb-lstm/1 --port 8001 [--workers 2]
"""

import argparse
import os

import onnxruntime as ort
import uvicorn
from fastapi import FastAPI
from pydantic import BaseModel

from rnnserve.service.core.package import read_package
from rnnserve.service.core.tokenizer import Tokenizer


class Body(BaseModel):
    text: str


def build() -> FastAPI:
    pkg = read_package(os.environ["BASELINE_PACKAGE"])
    tok = Tokenizer(pkg.tokenizer, fast=False)
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
    ap.add_argument("--workers", type=int, default=1)
    args = ap.parse_args()
    os.environ["BASELINE_PACKAGE"] = args.package
    uvicorn.run("bench.baseline_server:build", factory=True, workers=args.workers, host="127.0.0.1", port=args.port,
                log_level="warning", access_log=False)
