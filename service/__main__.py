"""`rnnserve` / `python -m service`: serve the model repository with uvicorn."""

from __future__ import annotations

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
    if not settings.models_dir.is_dir():
        print(f"error: model repository {settings.models_dir} does not exist", file=sys.stderr)
        return 2
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_config=None,
                access_log=False, timeout_graceful_shutdown=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
