"""Generation: POST /caption (uploaded images -> one caption each), POST /chat (an image and a
conversation -> the answer, streamed as server-sent events or as one JSON answer) and POST /generate
(a prompt -> PNG images), served by the generative model `polymodal serve --generator M` loads
beside the index.

Decoding runs on the engine's inference thread, never on the event loop: a caption request is one
call there, a streamed answer one call per piece, so searches go on between the pieces of a long
answer.
"""

from __future__ import annotations

import base64
import io
import json
import logging
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager, suppress

from fastapi import APIRouter, Depends, File, Form, HTTPException, Request, UploadFile
from fastapi.sse import EventSourceResponse, format_sse_event

from ...errors import ConversationError
from ...models.generative.decoding import GenerationConfig
from .. import schemas
from ..deps import ready_engine, refuse_empty_fields
from ..engine import Engine
from ..responses import BAD_BODY, BAD_UPLOAD, errors
from ..uploads import b64_bytes, check_size, decode_upload
from .search import IMAGE_PART, uploaded_image

log = logging.getLogger(__name__)

NO_GENERATOR = errors({404: "No generative model is loaded (serve --generator M), or it cannot do this "
                            "(a captioner does not chat)."})
MAX_BEAMS = 8
# Each uploaded file (FastAPI's own item schema, plus: an empty file is no image, as the one-file routes say).
IMAGE_FILE = {"type": "string", "contentMediaType": "application/octet-stream", "minLength": 1}
STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}  # proxies must not buffer the stream


def _json_data(schema: dict) -> dict:
    return {"type": "string", "contentMediaType": "application/json", "contentSchema": schema}


# One event of the /chat stream, as OpenAPI 3.2's `itemSchema` says it (FastAPI's own SSE routes use
# it too): a piece of the answer (the default event type, "message"), then "done" or "error".
CHAT_EVENT = {"oneOf": [
    {"type": "object", "required": ["data"], "properties": {
        "event": {"const": "message"}, "data": _json_data({"type": "string"})}},
    {"type": "object", "required": ["event", "data"], "properties": {
        "event": {"const": "done"}, "data": _json_data({"$ref": "#/components/schemas/ChatResponse"})}},
    {"type": "object", "required": ["event", "data"], "properties": {
        "event": {"const": "error"}, "data": _json_data({"$ref": "#/components/schemas/Error"})}},
]}
CHAT_RESPONSES = {
    200: {"description": "The answer: server-sent events (`stream`: true), or one JSON object.",
          "content": {"text/event-stream": {"itemSchema": CHAT_EVENT}}},
    **BAD_BODY, **errors({400: "The body could not be parsed, or the image is not valid base64 or not readable.",
                          413: "The image is larger than the upload limit, or the conversation is longer than "
                               "the model's context."}),
}


def build_router(max_images: int) -> APIRouter:
    """/caption and /chat, taking at most `max_images` images per caption request."""
    router = APIRouter(responses=NO_GENERATOR)
    files = File(..., min_length=1, max_length=max_images, json_schema_extra={"items": IMAGE_FILE},
                 description=f"Image files (any format Pillow reads), 1 to {max_images}.")

    @router.post("/caption", response_model=schemas.CaptionResponse, responses=BAD_UPLOAD, openapi_extra=IMAGE_PART)
    async def caption(request: Request, file: list[UploadFile] = files,
                      max_tokens: int = Form(schemas.CAPTION_MAX_TOKENS, ge=1, le=schemas.MAX_NEW_TOKENS),
                      beam: int = Form(1, ge=1, le=MAX_BEAMS, description="Beams (1: greedy)."),
                      eng: Engine = Depends(ready_engine)):
        """Image uploads -> a caption each (greedy, or beam search with `beam` > 1)."""
        await refuse_empty_fields(request, ("max_tokens", "beam"))
        model = generator_that(eng, "caption", "caption images")
        images = [await uploaded_image(request, upload) for upload in file]
        captions = await eng.call(model.caption, images, GenerationConfig(max_new_tokens=max_tokens, num_beams=beam))
        return {"captions": [{"file": upload.filename or "upload", "caption": text}
                             for upload, text in zip(file, captions)]}

    @router.post("/chat", response_model=schemas.ChatResponse, responses=CHAT_RESPONSES)
    async def chat(body: schemas.ChatRequest, eng: Engine = Depends(ready_engine)):
        """An image and a conversation ending with the user's question -> the model's answer."""
        model = generator_that(eng, "chat_stream", "chat")
        data = b64_bytes(body.image)
        check_size(data, "image", eng.cfg.max_upload_bytes)
        image = await decode_upload(data, "image")
        messages = [turn.model_dump() for turn in body.messages]
        config = GenerationConfig(max_new_tokens=body.max_tokens)
        with conversation_errors():
            if not body.stream:
                return {"answer": await eng.call(model.chat, image, messages, config)}
            # The first piece is decoded before the status goes out: a conversation the model cannot
            # take is then still a 413, not an error event.
            pieces = await eng.call(model.chat_stream, image, messages, config)
            first = await eng.call(next, pieces, None)
        return EventSourceResponse(answer_events(eng, pieces, first), headers=STREAM_HEADERS)

    @router.post("/generate", response_model=schemas.GenerateResponse, responses=BAD_BODY)
    async def generate(body: schemas.GenerateRequest, eng: Engine = Depends(ready_engine)):
        """A prompt -> `n` images from the text-to-image model (the same seed, the same images)."""
        model = generator_that(eng, "generate", "generate images")
        if hasattr(model, "frames"):
            raise HTTPException(404, "the loaded model generates clips, not images (this route serves text-to-image)")
        try:
            images = await eng.call(model.generate, [body.prompt], n=body.n, steps=body.steps,
                                    guidance=body.guidance, seed=body.seed, scheduler=body.scheduler)
        except ValueError as err:  # the model's own refusal (e.g. a prompt of special tokens alone)
            raise HTTPException(400, str(err)) from None
        return {"prompt": body.prompt, "images": [png_base64(image) for image in images]}

    return router


def png_base64(image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def generator_that(eng: Engine, method: str, doing: str):
    """The engine's generator if it has `method`, else 404 saying why."""
    if eng.generator is None:
        raise HTTPException(404, f"no generative model is loaded to {doing} (start the server with --generator MODEL)")
    if not hasattr(eng.generator, method):
        raise HTTPException(404, f"the loaded model ({type(eng.generator).__name__}) cannot {doing}")
    return eng.generator


@contextmanager
def conversation_errors() -> Iterator[None]:
    """The model's refusal of a conversation (longer than its context: the request's schema has
    refused the rest already) -> 413 with the model's reason."""
    try:
        yield
    except ConversationError as err:
        raise HTTPException(413, str(err)) from None


async def answer_events(eng: Engine, pieces: Iterator[str], first: str | None) -> AsyncIterator[bytes]:
    """`first` and the rest of the pieces, each an event (JSON text), then `event: done` with the
    whole answer. Each piece is decoded on the inference thread; a failure after the status went
    out is an `event: error`."""
    answer, piece = [], first
    try:
        while piece is not None:
            if piece:
                answer.append(piece)
                yield format_sse_event(data_str=json.dumps(piece))
            piece = await eng.call(next, pieces, None)
        yield format_sse_event(event="done", data_str=json.dumps({"answer": "".join(answer)}))
    except Exception as err:
        log.exception("polymodal serve: /chat failed while streaming")
        yield format_sse_event(event="error", data_str=json.dumps({"detail": f"{type(err).__name__}: {err}"}))
    finally:  # the client may have gone: close the generator (its cache) on the thread that runs it
        close = getattr(pieces, "close", None)  # a generator's; a plain iterator has nothing to free
        if close is not None:
            with suppress(RuntimeError):  # the executor is shut down: the app is closing
                eng.executor.submit(close)
