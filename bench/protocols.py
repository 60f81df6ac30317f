"""The V2 protocol over gRPC against HTTP, side by side in one run: one server (default settings), the same
model and review, one load generator for both (h2load: HTTP/1.1 for HTTP, HTTP/2 for gRPC, one request in
flight per connection). Single-text requests at c=1, 16 and 64, and 64-text batches at c=4.

    python bench/protocols.py [--model imdb-lstm-tutorial] [--duration 10] [--grpc-server native]

Needs h2load (apt-get install nghttp2-client). gRPC requests are what tritonclient.grpc sends (the text in
`raw_input_contents`); HTTP requests are V2 JSON. Prints req/s, texts/s and mean latency with each gRPC
cell's ratio to HTTP's, and writes bench/results/protocols.json.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import struct
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import ROOT, free_port, machine, reviews, start_server, stop_server  # noqa: E402


def grpc_body(model: str, texts: list[str]) -> bytes:
    """One length-prefixed gRPC message: a ModelInferRequest with the texts raw, as tritonclient sends them."""
    from rnnserve.service.grpc.messages import message
    from rnnserve.service.v2.tensors import encode_bytes

    request = message("ModelInferRequest")(model_name=model)
    request.inputs.add(name="text", datatype="BYTES", shape=[len(texts), 1])
    request.raw_input_contents.append(encode_bytes(texts))
    message = request.SerializeToString()
    return b"\x00" + struct.pack(">I", len(message)) + message


def http_body(texts: list[str]) -> bytes:
    tensor = {"name": "text", "datatype": "BYTES", "shape": [len(texts), 1], "data": texts}
    return json.dumps({"inputs": [tensor]}).encode()


def h2load(url: str, body: Path, clients: int, duration: int, headers: list[str], h1: bool) -> dict:
    cmd = ["h2load", "-c", str(clients), "-m", "1", "-D", str(duration), "--warm-up-time", "1", "-d", str(body)]
    cmd += [arg for h in headers for arg in ("-H", h)] + (["--h1"] if h1 else []) + [url]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out).group(1))
    done = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored",
                     out)
    mean = re.search(r"time for request:\s+\S+\s+\S+\s+(\S+)", out).group(1)
    mean_ms = float(re.match(r"[\d.]+", mean).group(0)) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[re.sub(r"[\d.]", "",
                                                                                               mean)]
    non_2xx = int(re.search(r"status codes: \d+ 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out).group(1) or 0)
    return {"requests_per_s": rps, "mean_ms": mean_ms, "succeeded": int(done.group(2)),
            "failed": int(done.group(3)) + int(done.group(4)) + non_2xx}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="imdb-lstm-tutorial")
    ap.add_argument("--models-dir", default=str(ROOT / "models"))
    ap.add_argument("--duration", type=int, default=10, help="seconds per cell")
    ap.add_argument("--grpc-server", choices=["grpcio", "native"], default="grpcio",
                    help="the server's gRPC server (native: pygrpc-native, the [grpc-native] extra)")
    args = ap.parse_args()
    if not shutil.which("h2load"):
        sys.exit("h2load is not installed (apt-get install nghttp2-client)")
    import numpy as np
    import tritonclient.grpc as triton

    text = next(t for t in reviews(2000) if 800 <= len(t) <= 1000)
    batch = [t for t in reviews(2000) if 800 <= len(t) <= 1000][:64]
    port, grpc_port = free_port(), free_port()
    proc = start_server([sys.executable, "-m", "rnnserve.service", "--models-dir", args.models_dir, "--no-access-log",
                         "--log-level", "warning", "--port", str(port), "--grpc-port", str(grpc_port),
                         "--grpc-server", args.grpc_server], port)
    report = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "machine": machine(), "model": args.model,
              "duration_s": args.duration, "results": []}
    try:
        # The gRPC bodies answer (h2load sees only HTTP/2 statuses; gRPC's own is in the trailers).
        tensor = triton.InferInput("text", [1], "BYTES")
        tensor.set_data_from_numpy(np.array([text.encode()], dtype=object))
        triton.InferenceServerClient(f"127.0.0.1:{grpc_port}").infer(args.model, [tensor])
        with tempfile.TemporaryDirectory() as tmp:
            for label, texts, clients in [("single text, c=1", [text], 1), ("single text, c=16", [text], 16),
                                          ("single text, c=64", [text], 64), ("64-text batches, c=4", batch, 4)]:
                row = {"scenario": label}
                for protocol in ("http", "grpc"):
                    body = Path(tmp) / f"{protocol}.bin"
                    if protocol == "http":
                        body.write_bytes(http_body(texts))
                        url, headers = f"http://127.0.0.1:{port}/v2/models/{args.model}/infer", [
                            "content-type: application/json"]
                    else:
                        body.write_bytes(grpc_body(args.model, texts))
                        url, headers = f"http://127.0.0.1:{grpc_port}/inference.GRPCInferenceService/ModelInfer", [
                            "content-type: application/grpc", "te: trailers"]
                    row[protocol] = h2load(url, body, clients, args.duration, headers, h1=protocol == "http")
                    row[protocol]["texts_per_s"] = row[protocol]["requests_per_s"] * len(texts)
                row["grpc_vs_http"] = row["grpc"]["requests_per_s"] / row["http"]["requests_per_s"]
                report["results"].append(row)
    finally:
        stop_server(proc)
    print(f"{report['machine']}, model {args.model}, {args.duration}s per cell, one server, h2load")
    print(f"{'scenario':22} {'protocol':8} {'req/s':>8} {'texts/s':>8} {'mean ms':>8} {'failed':>6} {'gRPC/HTTP':>9}")
    for row in report["results"]:
        for protocol in ("http", "grpc"):
            r = row[protocol]
            ratio = f"{row['grpc_vs_http']:.2f}x" if protocol == "grpc" else ""
            print(f"{row['scenario']:22} {protocol:8} {r['requests_per_s']:8.0f} {r['texts_per_s']:8.0f} "
                  f"{r['mean_ms']:8.2f} {r['failed']:6d} {ratio:>9}")
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / "protocols.json").write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
