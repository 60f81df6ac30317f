"""Online serving on Ray Serve: this service's FastAPI app as a Serve deployment (`@serve.ingress`), so a
replica answers the same /v1 and V2 routes as `rnnserve`, through the same runtime and batcher.

Each replica builds the app when it starts (settings from RNNSERVE_* variables) and loads every package of
the model repository before Serve routes traffic to it. Replicas, autoscaling and the replicas' settings
come from deploy/ray/serve.yaml:

    serve run deploy/ray/serve.yaml                                  # a local Ray, HTTP on 127.0.0.1:8000
    serve deploy deploy/ray/serve.yaml --address http://HEAD:8265    # onto a running cluster
"""

from __future__ import annotations

from ray import serve

from rnnserve.service import logs
from rnnserve.service.app import create_app
from rnnserve.service.settings import Settings


def build_app():
    settings = Settings(grpc_port=0)  # Serve's proxy routes HTTP; its replicas serve no port of their own
    logs.configure(settings.log_level, settings.log_json)
    return create_app(settings, wait_for_models=True)


@serve.deployment(name="rnnserve", ray_actor_options={"num_cpus": 1}, max_ongoing_requests=256)
@serve.ingress(build_app)
class RnnServe:
    """One replica: every package of the model repository, each with its runtime and batcher. Serve's default
    of 5 requests in flight per replica would starve the batcher: max_ongoing_requests lets batches form."""


app = RnnServe.bind()  # type: ignore[attr-defined]  # serve.deployment made it a Deployment
