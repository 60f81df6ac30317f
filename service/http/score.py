"""POST /v1/models/{name}/score: a file of texts in, one scored row per input row out, streamed."""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import replace
from typing import Literal

from fastapi import APIRouter, Query, Request
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import Response

from rnnserve.service.core.errors import ClientGone, InvalidInput, PayloadTooLarge, ServiceError
from rnnserve.service.core.rows import codec_for, format_of
from rnnserve.service.http.body import VERSION_PARAMETER, path_version
from rnnserve.service.http.codecs import usage
from rnnserve.service.http.context import dataplane, server
from rnnserve.service.http.middleware import StreamedBodyRoute
from rnnserve.service.http.v1 import ERRORS
from rnnserve.service.runtime.text import ClassificationResult, TextClassifier
from rnnserve.service.scoring.pipeline import ScoreOptions, maybe_gunzip, score_stream
from rnnserve.service.scoring.spool import BodySpool

log = logging.getLogger("rnnserve.score")
router = APIRouter(prefix="/v1", tags=["v1"], responses=ERRORS, route_class=StreamedBodyRoute)

CONTENT_FORMATS = {"text/csv": "csv", "application/csv": "csv", "application/x-ndjson": "jsonl",
                   "application/jsonl": "jsonl", "application/x-jsonlines": "jsonl", "application/jsonlines": "jsonl",
                   "text/plain": "text"}
MEDIA = {"jsonl": "application/x-ndjson", "csv": "text/csv; charset=utf-8"}
SCORE_BODY = {"requestBody": {"required": True, "content": {
    "text/csv": {"schema": {"type": "string", "format": "binary"}},
    "application/x-ndjson": {"schema": {"type": "string", "format": "binary"}},
    "text/plain": {"schema": {"type": "string", "format": "binary"}},
    "multipart/form-data": {"schema": {"type": "object", "properties": {
        "file": {"type": "string", "format": "binary"}}, "required": ["file"]}},
}}, "responses": {"200": {"description": "One output row per input row, in input order, then a summary",
                          "content": {"application/x-ndjson": {}, "text/csv": {}}}}}


class ScoreResponse(Response):
    """Streams output while the upload is still arriving; one task owns receive(), so body chunks
    and the client's disconnect are both seen, and a disconnect cancels the scoring at once. The body
    goes through a BodySpool, so reading it never waits for the client to read the answer."""

    def __init__(self, media_type: str, run, upload: UploadFile | None, max_bytes: int):
        self.content_type, self.run, self.upload, self.max_bytes = media_type, run, upload, max_bytes
        self.status_code, self.background = 200, None

    async def __call__(self, scope, receive, send):
        body = BodySpool()
        body_error: list[BaseException] = []
        client_gone = asyncio.Event()

        async def chunks():
            if self.upload is not None:
                while data := await self.upload.read(1 << 16):
                    yield data
                return
            while (data := await body.get()) is not None:
                yield data
            if body_error:
                raise body_error[0]

        work = asyncio.create_task(self._stream(send, maybe_gunzip(chunks(), self.max_bytes)))

        async def pump():
            waiting_for_body = self.upload is None
            while True:
                try:
                    message = await receive()
                except HTTPException as exc:  # body over the limit while streaming
                    body_error.append(exc)
                    body.close()
                    return
                if message["type"] == "http.disconnect":
                    client_gone.set()
                    work.cancel()
                    return
                if waiting_for_body:
                    if message.get("body"):
                        body.put(message["body"])
                    if not message.get("more_body", False):
                        waiting_for_body = False
                        body.close()

        pumper = asyncio.create_task(pump())
        try:
            await work
        except asyncio.CancelledError:
            if client_gone.is_set():
                log.info("client disconnected; scoring stopped")
                return
            # The server cancels this request (and with it the work): it is stopping and its grace period is
            # over. Say so in the stream, so a client can tell a cut answer from a whole one, then let the
            # cancellation go on.
            await asyncio.gather(work, return_exceptions=True)
            reason = "the server is shutting down; rows after the last one sent were not scored"
            log.warning("scoring stopped", extra={"reason": reason})
            await self._end(send, reason)
            raise
        finally:
            pumper.cancel()
            body.discard()
            if self.upload is not None:
                await self.upload.close()

    async def _stream(self, send, chunks) -> None:
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", self.content_type.encode())]})
        try:
            async for text in self.run(chunks):
                await send({"type": "http.response.body", "body": text.encode("utf-8"), "more_body": True})
        except (HTTPException, ServiceError) as exc:  # the status is sent already: end the stream with the reason
            reason = exc.detail if isinstance(exc, HTTPException) else exc.message
            log.warning("scoring stopped", extra={"reason": reason})
            await self._end(send, reason)
            return
        except Exception:  # noqa: BLE001 - a fault of ours: still end the stream so the client sees it cut
            log.exception("scoring failed")
            await self._end(send, "internal error; rows after the last one sent were not scored")
            return
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _end(self, send, reason: str) -> None:
        """End a stream that could not finish with a last line saying why (instead of the summary)."""
        tail = json.dumps({"error": reason}) if "json" in self.content_type else f"# error {reason}"
        await send({"type": "http.response.body", "body": tail.encode() + b"\n", "more_body": False})


def _input_format(request: Request, given: str | None, upload: UploadFile | None) -> str:
    if given:
        return given
    if upload is not None and upload.filename and (fmt := format_of(upload.filename)):
        return fmt
    content_type = (upload.content_type if upload is not None else request.headers.get("content-type", ""))
    fmt = CONTENT_FORMATS.get((content_type or "").split(";")[0].strip().lower())
    if fmt is None:
        raise InvalidInput("cannot tell the file format: pass ?format=csv|jsonl|text or a Content-Type of "
                           "text/csv, application/x-ndjson or text/plain")
    return fmt


def _charset(request: Request, upload: UploadFile | None) -> str | None:
    """The declared charset of the upload (its part's Content-Type) or of the body; None when none is declared."""
    content_type = upload.content_type if upload is not None else request.headers.get("content-type", "")
    params = (p.partition("=") for p in (content_type or "").split(";")[1:])
    return codec_for(next((value for key, _, value in params if key.strip().lower() == "charset"), None))


async def _score(request: Request, name: str, version: str | None, options: ScoreOptions):
    registry, settings, plane = server(request).registry, server(request).settings, dataplane(request)
    model = registry.get(name, version, TextClassifier, usage)
    pinned = model.version  # the whole file is scored by this version, whatever loads meanwhile
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > settings.max_score_bytes:
        raise PayloadTooLarge(f"upload of {length} bytes exceeds the limit of {settings.max_score_bytes} bytes")
    upload: UploadFile | None = None
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        try:
            form = await request.form(max_files=1, max_fields=8)
        except ClientDisconnect:  # an abandoned upload is the client's doing, not a server error
            raise ClientGone("the client closed the connection during the upload") from None
        field = form.get("file")
        if not isinstance(field, UploadFile):
            raise InvalidInput("multipart upload needs a file field named 'file'")
        upload = field
    fmt = _input_format(request, options.input_format, upload)
    accepted = "csv" if "text/csv" in request.headers.get("accept", "") else "jsonl"
    options = replace(options, output_format=options.output_format or accepted, encoding=_charset(request, upload))
    reader = options.reader(fmt, settings.max_text_chars)
    writer = options.writer(model.labels)

    async def classify(texts: list[str]) -> ClassificationResult:
        # Each block goes to the current copy: a reload swaps copies under a long stream. Once the model is
        # unloaded, each block becomes error rows (NotFound) and the stream still ends with its summary.
        return (await plane.predict(name, pinned, texts, "score"))[1]

    return ScoreResponse(MEDIA[writer.fmt], lambda chunks: score_stream(chunks, reader, writer, classify), upload,
                         settings.max_score_bytes)


Format = Query(None, description="Input format; by default from Content-Type or the uploaded file's name.")
TextColumn = Query("text", description="CSV column or JSON field holding the text.")
IdColumn = Query(None, description="CSV column or JSON field holding the row id (default 'id' if present).")
Output = Query(None, description="Output format; by default CSV if Accept asks for text/csv, else JSON Lines.")
Probabilities = Query(False, description="Add every label's probability to each row.")


@router.post("/models/{name}/score", summary="Score a file of texts (CSV, JSON Lines or plain text)",
             openapi_extra=SCORE_BODY, response_model=None)
@router.post("/models/{name}/versions/{version}/score", summary="Score a file with one version",
             openapi_extra=SCORE_BODY | VERSION_PARAMETER, response_model=None)
async def score(name: str, request: Request,
                format: Literal["csv", "jsonl", "text"] | None = Format, text_column: str = TextColumn,
                id_column: str | None = IdColumn, output: Literal["jsonl", "csv"] | None = Output,
                probabilities: bool = Probabilities):
    options = ScoreOptions(input_format=format, text_column=text_column, id_column=id_column, output_format=output,
                           probabilities=probabilities)
    return await _score(request, name, path_version(request), options)
