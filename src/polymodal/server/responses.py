"""What the server answers with when something is wrong: JSON that any text fits in, and the error
responses each route declares in the OpenAPI document."""

from __future__ import annotations

import json
import math

import orjson
from fastapi import HTTPException, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response

from .schemas import Error


class AsciiJSONResponse(JSONResponse):
    """JSON escaped to ASCII: an error may echo what the client sent, and JSON's \\ud800 escapes
    can carry lone surrogates that UTF-8 cannot (FastAPI's own response would fail with a 500)."""

    def render(self, content) -> bytes:
        return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode("ascii")


class FastJSONResponse(Response):
    """JSON through orjson, returned by a hot route as it is: FastAPI then skips validating and
    re-encoding it against the response model (the route builds exactly the declared shape). Text
    orjson refuses (a lone surrogate from a file name that is not UTF-8) goes out as escaped ASCII."""

    media_type = "application/json"

    def render(self, content) -> bytes:
        try:
            return orjson.dumps(content)
        except orjson.JSONEncodeError:
            return AsciiJSONResponse.render(self, content)


async def http_error(_: Request, err: HTTPException) -> AsciiJSONResponse:
    return AsciiJSONResponse({"detail": err.detail}, status_code=err.status_code, headers=err.headers)


async def validation_error(_: Request, err: RequestValidationError) -> AsciiJSONResponse:
    # An echoed input may be bytes that are not UTF-8 (a body that is not text at all), or a NaN
    # or an infinity (Python's json reads them; JSON cannot carry them): those are echoed as text.
    detail = jsonable_encoder(err.errors(), custom_encoder={bytes: lambda b: b.decode("utf-8", "replace"),
                                                            float: lambda x: x if math.isfinite(x) else str(x)})
    return AsciiJSONResponse({"detail": detail}, status_code=422)


def errors(codes: dict[int, str]) -> dict:
    """Status code -> description, as FastAPI's `responses`, each with an Error body."""
    return {code: {"model": Error, "description": text} for code, text in codes.items()}


NOT_READY = errors({503: "The model or the index is still loading, or failed to load (see /health)."})
BAD_BODY = errors({400: "The body could not be parsed (not JSON, or not a well-formed form)."})
BAD_UPLOAD = errors({400: "The body could not be parsed, or the upload is not a readable image.",
                     413: "The upload is larger than the server's limit (--max-upload-mb)."})
BAD_AUDIO_UPLOAD = errors({400: "The body could not be parsed, or the upload is not usable audio: empty, not a "
                                "readable audio file, too long or silent.",
                           404: "The served model has no audio tower: it cannot embed audio.",
                           413: "The upload is larger than the server's limit (--max-upload-mb)."})
