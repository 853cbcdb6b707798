"""GET /items/{id}/file: the indexed file itself (the result grid's thumbnails and audio players)."""

from __future__ import annotations

import mimetypes
from pathlib import Path

from fastapi import APIRouter, Depends, HTTPException, Path as PathParam
from fastapi.responses import FileResponse

from ..deps import ITEM_FILE, ready_engine
from ..engine import Engine
from ..responses import NOT_READY, errors

router = APIRouter()

# The content types this route sends: a file's own type when it is an image or a sound, else bytes.
MEDIA = ("image/*", "audio/*", "application/octet-stream")
FILE_RESPONSE = {200: {"description": "The file, with its own media type.",
                       "content": {media: {"schema": {"type": "string", "format": "binary"}} for media in MEDIA}},
                 **errors({404: "No item with this id.", 410: "The item's file is gone from disk."}), **NOT_READY}


def media_type(path: str) -> str:
    guessed = mimetypes.guess_type(path)[0] or ""
    return guessed if guessed.split("/")[0] in ("image", "audio") else "application/octet-stream"


ITEM_ID = PathParam(ge=0, le=2**63 - 1, description="An item id (SQLite's integers are 64-bit).")


@router.get(ITEM_FILE, name="item_file", response_class=FileResponse, responses=FILE_RESPONSE)
async def item_file(item_id: int = ITEM_ID, eng: Engine = Depends(ready_engine)):
    row = await eng.item(item_id)
    if row is None:
        raise HTTPException(404, f"no item {item_id}")
    if not Path(row[0]).is_file():
        raise HTTPException(410, f"item {item_id}: {row[0]} is gone from disk")
    return FileResponse(row[0], media_type=media_type(row[0]))
