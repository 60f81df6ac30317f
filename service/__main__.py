"""`rnnserve` / `python -m service`: serve the model repository with uvicorn."""

from __future__ import annotations

import os
import signal
import sys

import uvicorn
from pydantic import ValidationError

from service import logs
from service.app import create_app
from service.settings import Settings


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
    if not settings.models_dir.is_dir():
        print(f"error: model repository {settings.models_dir} does not exist", file=sys.stderr)
        return 2
    # uvicorn shuts down gracefully on SIGTERM/SIGINT, then re-raises the signal with the handlers it found;
    # by then every request has finished, so those handlers let the process exit 0 (docker stop is clean).
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    common = dict(host=settings.host, port=settings.port, log_config=None, access_log=False,
                  timeout_graceful_shutdown=max(1, int(settings.shutdown_grace_s)))
    if settings.workers == 1:
        uvicorn.run(create_app(settings), **common)
    else:  # each worker process builds its app from the environment
        os.environ.update(settings.to_env())
        uvicorn.run("service.app:create_app", factory=True, workers=settings.workers, **common)
    return 0


if __name__ == "__main__":
    sys.exit(main())
