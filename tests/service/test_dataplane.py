"""The data plane's seam: every prediction, whatever protocol asked for it (V2 over HTTP and gRPC, /v1 predict,
file scoring), runs through DataPlane.predict, and its observers see each one once, failures included; an
observer that fails never fails an answer."""

import numpy as np
import tritonclient.grpc as triton_grpc

from rnnserve.service.v2.dataplane import Prediction
from tests.conftest import free_port, in_process, wait_ready


class Recorder:
    def __init__(self):
        self.events: list[Prediction] = []

    def prediction(self, event: Prediction) -> None:
        self.events.append(event)


class Broken:
    def prediction(self, event: Prediction) -> None:
        raise RuntimeError("an observer's own fault")


def test_every_protocol_feeds_the_observers_once(model_repo):
    port = free_port()
    with in_process(model_repo, grpc_port=port) as client:
        wait_ready(client)
        recorder = Recorder()
        client.app.state.dataplane.observers[:] = [Broken(), recorder]
        r = client.post("/v1/models/sentiment-lstm/predict", json={"texts": ["a fine film", "dull"]})
        assert r.status_code == 200
        body = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1, 1], "data": ["a fine film"]}]}
        assert client.post("/v2/models/topics-gru/infer", json=body).status_code == 200
        text = triton_grpc.InferInput("text", [1, 1], "BYTES")
        text.set_data_from_numpy(np.array([[b"a fine film"]], dtype=object))
        triton_grpc.InferenceServerClient(f"127.0.0.1:{port}").infer("sentiment-lstm", [text])
        r = client.post("/v1/models/sentiment-lstm/score", content=b"text\nfine\nawful\n",
                        headers={"content-type": "text/csv"})
        assert r.status_code == 200
        plane = client.app.state.dataplane
        try:
            client.portal.call(plane.predict, "sentiment-lstm", "9", ["x"], "v1")
        except Exception as exc:  # noqa: BLE001 - the runtime's error passes through
            assert type(exc).__name__ == "NotFound"
    seen = [(e.endpoint, e.name, list(e.rows), e.error is None) for e in recorder.events]
    assert seen == [("v1", "sentiment-lstm", ["a fine film", "dull"], True),
                    ("v2", "topics-gru", ["a fine film"], True), ("v2", "sentiment-lstm", ["a fine film"], True),
                    ("score", "sentiment-lstm", ["fine", "awful"], True), ("v1", "sentiment-lstm", ["x"], False)]
    assert recorder.events[0].result.probabilities.shape == (2, 2) and recorder.events[0].model.version == 1
    assert recorder.events[-1].model is None and recorder.events[-1].error is not None
