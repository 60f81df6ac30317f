"""Text generation over HTTP, for /v1 generate and the V2 generate extension: the limits, the first character
before anything is sent (so the errors keep their status), and server-sent events."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import orjson
from fastapi.responses import StreamingResponse

from rnnserve.service.core.errors import PayloadTooLarge, ServiceError
from rnnserve.service.http.errors import error_body
from rnnserve.service.runtime.generator import Sampling, TextGenerator
from rnnserve.service.settings import Settings


async def start_generation(settings: Settings, model: TextGenerator, prompt: str,
                           sampling: Sampling) -> tuple[str, AsyncIterator[str]]:
    """(first character, the rest): the limits and the prompt's errors raise here, before any event is sent."""
    if len(prompt) > settings.max_text_chars:
        raise PayloadTooLarge(f"the prompt has {len(prompt)} characters; the limit is {settings.max_text_chars}")
    chars = model.generate(prompt, sampling, settings.max_generate_chars, settings.per_worker(settings.max_generations))
    return await anext(chars), chars


def event_stream(first: str, chars: AsyncIterator[str], frame: Callable[[str], dict],
                 done: Callable[[str], bytes | None]) -> StreamingResponse:
    """Server-sent events: one `data: frame(c)` per character, then done(whole text)'s event (None: none), or
    `event: error` with the one error model's body if the generation fails midway."""

    async def events() -> AsyncIterator[bytes]:
        text = [first]
        yield b"data: " + orjson.dumps(frame(first)) + b"\n\n"
        try:
            async for c in chars:
                text.append(c)
                yield b"data: " + orjson.dumps(frame(c)) + b"\n\n"
        except ServiceError as exc:
            yield b"event: error\ndata: " + orjson.dumps(error_body(exc)) + b"\n\n"
            return
        last = done("".join(text))
        if last is not None:
            yield last + b"\n\n"

    return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
