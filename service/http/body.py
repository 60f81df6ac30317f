"""Request bodies for the JSON endpoints: read, type-checked, parsed (large ones off the event loop),
and answers encoded with orjson."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TypeVar

import orjson
from fastapi import Request, Response
from pydantic import BaseModel, ValidationError

from rnnserve.service.core.errors import BadRequest, InvalidInput, UnsupportedMediaType

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)
MAX_ERRORS_LISTED = 5  # a body with a million wrong values gets a short answer, not a million messages
# Parsing a body this large would hold the event loop for milliseconds: do it in a thread, where the
# interpreter's switch interval lets the loop answer other requests in between.
OFF_LOOP_BYTES = 256 * 1024


# One handler serves an operation's two routes (newest version, and /versions/{version}); it reads the version
# from the path, so the versioned route declares that parameter for OpenAPI here.
VERSION_PARAMETER = {"parameters": [{"name": "version", "in": "path", "required": True,
                                     "schema": {"type": "string"}, "description": "A loaded version number."}]}


# ... and /labels/{label} (/v1) names a version by its label (service/rollout).
LABEL_PARAMETER = {"parameters": [{"name": "label", "in": "path", "required": True, "schema": {"type": "string"},
                                   "description": "A version label of the model's rollout (stable, canary, ...)."}]}


def path_version(request: Request, resolve: bool = True) -> str | None:
    """The version the path names: a number, a label's version, and without either the stable version (None:
    the newest), as the data plane resolves them; resolve=False: as the path gives it (a prediction's version
    is chosen by the data plane, the canary's share included)."""
    params = request.path_params
    version = params.get("version") or params.get("label")
    if not resolve:
        return version
    resolved = request.app.state.dataplane.resolve(params["name"], version)
    return None if resolved is None else str(resolved)


def check_json(request: Request, tritonclient: bool = False) -> None:
    """A JSON body must say so: application/json or a +json type. The types a page on another origin may send
    without a CORS preflight (text/plain, forms) and a missing type are refused, so a browser always asks first.
    tritonclient: also what it sends, no Content-Type at all (and the binary tensor extension's
    application/octet-stream); it sends no Origin either, and a browser's request always does, which the
    middleware checks."""
    content_type = request.headers.get("content-type", "")
    media, _, params = content_type.partition(";")
    media = media.strip().lower()
    # JSON is UTF-8 (RFC 8259): a body declared in another charset would be read as something it is not.
    charset = next((v.strip().strip('"').lower() for k, _, v in (p.partition("=") for p in params.split(";"))
                    if k.strip().lower() == "charset"), "utf-8")
    json_type = media == "application/json" or (media.startswith("application/") and media.endswith("+json")
                                                 and media != "application/+json")
    if (json_type and charset in ("utf-8", "utf8")) or (tritonclient and media in ("", "application/octet-stream")):
        return
    sent = f"not {content_type[:80]!r}" if content_type else "no Content-Type was sent"
    raise UnsupportedMediaType(f"send the body as JSON (UTF-8) with Content-Type: application/json or an "
                               f"application/*+json type ({sent})")


async def parse(request: Request, parser: Callable[[bytes], T]) -> T:
    body = await request.body()
    if len(body) >= OFF_LOOP_BYTES:
        return await asyncio.to_thread(parser, body)
    return parser(body)


def validation_error(errors: list[dict]) -> BadRequest | InvalidInput:
    """pydantic's (or FastAPI's) errors as one message naming each field: invalid JSON is 400, the wrong
    shape 422."""
    if any(e["type"] == "json_invalid" for e in errors):
        return BadRequest("request body is not valid JSON")
    # "Input should be null" only says the field is optional: noise beside the real errors
    errors = [e for e in errors if tuple(e.get("loc", ()))[-1:] != ("none",)] or errors
    parts = []
    for e in errors[:MAX_ERRORS_LISTED]:
        # pydantic names union branches in the location ("list[float]", "none"): the field path is enough
        loc = ".".join(str(p) for p in e.get("loc", ()) if p != "body" and not _branch(p))
        parts.append(f"{loc or 'body'}: {e.get('msg')}")
    more = len(errors) - MAX_ERRORS_LISTED
    return InvalidInput("; ".join(parts) + (f"; and {more} more" if more > 0 else ""))


def _branch(part) -> bool:
    return isinstance(part, str) and (part in ("none", "float", "str", "int", "bool") or "[" in part)


def model_parser(model: type[M]) -> Callable[[bytes], M]:
    def parse_model(body: bytes) -> M:
        try:
            return model.model_validate_json(body)
        except ValidationError as exc:
            errors = exc.errors(include_url=False, include_context=False, include_input=False)
            raise validation_error([dict(e) for e in errors]) from None

    return parse_model


def json_response(content, status_code: int = 200, headers: dict | None = None) -> Response:
    return Response(orjson.dumps(content), status_code=status_code, headers=headers, media_type="application/json")
