"""`rnnserve` / `python -m rnnserve.service`: serve the model repository with uvicorn (default) or Granian."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any, cast

from pydantic import ValidationError

from rnnserve.service import logs
from rnnserve.service.grpc.server import port_taken
from rnnserve.service.settings import STATE_DIR_ENV, Settings
from rnnserve.service.store import StoreError, open_mirror

APP_FACTORY = "rnnserve.service.app:create_app"


def serve_granian(settings: Settings, workers: int) -> None:
    try:
        from granian.constants import Interfaces
        from granian.http import HTTP1Settings
        from granian.server import Server
    except ImportError:
        sys.exit("error: --server granian needs Granian: pip install 'rnnserve[granian]'")

    # Granian's own log lines (start, workers, errors) in the service's JSON format; access lines come from
    # the service's middleware, with request ids.
    formatter = ({"()": "rnnserve.service.logs.JsonFormatter"} if settings.log_json else
                 {"()": "logging.Formatter", "fmt": "%(asctime)s %(levelname)s %(name)s %(message)s"})
    handler = {"formatter": "generic", "class": "logging.StreamHandler", "stream": "ext://sys.stderr"}
    dictconfig = {"formatters": {"generic": formatter}, "handlers": {"console": handler, "access": handler}}
    Server(APP_FACTORY, factory=True, interface=Interfaces.ASGI, address=settings.host, port=settings.port,
           workers=workers, log_level=cast(Any, settings.log_level.lower()), log_dictconfig=dictconfig,
           log_access=False,
           workers_kill_timeout=max(1, int(settings.shutdown_grace_s)) + 5, backlog=2048,
           # Granian's own guards: its head buffer and read deadline; requests in flight per worker
           http1_settings=HTTP1Settings(max_buffer_size=settings.max_header_bytes,
                                        header_read_timeout=int(settings.header_timeout_s * 1000)),
           backpressure=settings.per_worker(settings.max_connections),
           respawn_failed_workers=True).serve()  # uvicorn's supervisor replaces a dead worker by itself


def serve_uvicorn(settings: Settings, workers: int) -> None:
    import uvicorn

    # uvicorn shuts down gracefully on SIGTERM/SIGINT, then re-raises the signal with the handlers it found;
    # by then every request has finished, so those handlers let the process exit 0 (docker stop is clean).
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    from rnnserve.service.http.connection import GuardedHttpTools

    uvicorn.run(APP_FACTORY, factory=True, workers=workers if workers > 1 else None, host=settings.host,
                port=settings.port, log_config=None, access_log=False, http=GuardedHttpTools,
                timeout_graceful_shutdown=max(1, int(settings.shutdown_grace_s)))


def main(argv: list[str] | None = None) -> int:
    try:
        settings = Settings(_cli_parse_args=sys.argv[1:] if argv is None else argv)
    except ValidationError as exc:
        print(f"error: invalid settings:\n{exc}", file=sys.stderr)
        return 2
    logs.configure(settings.log_level, settings.log_json)
    try:
        settings.keys()
    except OSError as exc:
        print(f"error: cannot read api_keys_file: {exc}", file=sys.stderr)
        return 2
    if settings.models_store:  # a bucket: its cache (models_dir's parent) safe to serve from, its settings workable
        try:
            open_mirror(settings.models_store, settings.models_dir.parent, settings.store_options(),
                        settings.models_cache_max_bytes)
        except StoreError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    elif not settings.models_dir.is_dir():
        print(f"error: model repository {settings.models_dir} does not exist", file=sys.stderr)
        return 2
    if settings.grpc_port and settings.grpc_server == "native" and importlib.util.find_spec("pygrpc_native") is None:
        print("error: --grpc-server native needs pygrpc-native: pip install 'rnnserve[grpc-native]'", file=sys.stderr)
        return 2
    if settings.grpc_port and port_taken(settings.host, settings.grpc_port):
        print(f"error: the gRPC port {settings.host}:{settings.grpc_port} is in use by another process (another "
              "server?): choose another with --grpc-port, or 0 for no gRPC", file=sys.stderr)
        return 2
    workers = settings.worker_count()
    # Every worker process builds its app from the environment, so both servers get the same settings.
    os.environ.update(settings.to_env() | {"RNNSERVE_WORKERS": str(workers)})
    with shared_state(workers):
        (serve_granian if settings.server == "granian" else serve_uvicorn)(settings, workers)
    return 0


@contextlib.contextmanager
def shared_state(workers: int):
    """Several workers: a fresh directory they share for model control (service/control.py) and for
    prometheus_client's multiprocess metrics, removed when the server stops. The variables must be set
    before the workers start: prometheus_client picks its value store when it is imported."""
    if workers < 2:
        yield
        return
    with tempfile.TemporaryDirectory(prefix="rnnserve-") as state:
        (Path(state) / "metrics").mkdir()
        os.environ.update({STATE_DIR_ENV: state, "PROMETHEUS_MULTIPROC_DIR": str(Path(state) / "metrics")})
        yield


if __name__ == "__main__":
    sys.exit(main())
