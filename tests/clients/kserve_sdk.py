"""The KServe SDK's own clients against a running rnnserve, unchanged (run by tests/service/test_v2_conformance.py
in a process of its own: KServe's generated protobuf classes and tritonclient's share names in protobuf's
default pool). Usage: kserve_sdk.py HTTP_URL GRPC_HOST:PORT; prints "ok" when every check held."""

from __future__ import annotations

import asyncio
import sys

import numpy as np
from kserve import InferenceGRPCClient, InferenceRESTClient, InferInput, InferRequest, RESTConfig
from kserve.errors import InvalidInput
from kserve.protocol.infer_type import RequestedOutput

MODEL = "sentiment-lstm"
TEXTS = ["A moving, beautifully acted film.", "Dull, predictable and far too long."]


def request(outputs: list[str] | None = None) -> InferRequest:
    text = InferInput("text", [len(TEXTS), 1], "BYTES")
    text.set_data_from_numpy(np.array([[t.encode()] for t in TEXTS], dtype=object))
    wanted = None if outputs is None else [RequestedOutput(name) for name in outputs]
    return InferRequest(MODEL, [text], request_id="kserve-1", request_outputs=wanted)


async def main(http_url: str, grpc_url: str) -> None:
    rest = InferenceRESTClient(RESTConfig(protocol="v2", retries=0))
    rpc = InferenceGRPCClient(grpc_url, retries=0)
    try:
        assert await rest.is_server_live(http_url) and await rest.is_server_ready(http_url)
        assert await rest.is_model_ready(http_url, MODEL)
        assert await rpc.is_server_live() and await rpc.is_server_ready() and await rpc.is_model_ready(MODEL)
        assert await rpc.is_model_ready("nope") is False
        over_rest = await rest.infer(http_url, request(), model_name=MODEL)
        over_grpc = await rpc.infer(request())
        assert over_rest.id == "kserve-1" and over_grpc.id == "kserve-1"
        by_name = {o.name: o for o in over_rest.outputs}
        probabilities = by_name["probabilities"].as_numpy()
        assert probabilities.shape == (2, 2) and by_name["label"].shape == [2, 1]
        grpc_probabilities = {o.name: o for o in over_grpc.outputs}["probabilities"].as_numpy()
        assert np.array_equal(probabilities, grpc_probabilities)
        for failing in (rest.infer(http_url, request(["label", "label"]), model_name=MODEL),
                        rpc.infer(request(["label", "label"]))):
            try:
                await failing
            except (InvalidInput, Exception) as exc:  # noqa: BLE001 - each client raises its own type
                assert "named twice" in str(exc), exc
            else:
                raise AssertionError("an output named twice was answered")
    finally:
        await rest.close()
        await rpc.close()
    print("ok")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
