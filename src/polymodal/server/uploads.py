"""Uploaded and base64 images -> PIL images, uploaded audio files -> waveforms, or a 4xx naming the reason."""

from __future__ import annotations

import base64
import binascii

from fastapi import HTTPException, UploadFile
from starlette.concurrency import run_in_threadpool

from ..errors import DataError
from ..modalities.audio_files import decode_audio_bytes
from ..modalities.image_files import decode_image_bytes


async def read_upload(upload: UploadFile, limit: int) -> bytes:
    """The upload's bytes; 413 past `limit` (reading stops just after it)."""
    data = await upload.read(limit + 1)
    check_size(data, upload.filename or "upload", limit)
    return data


def check_size(data: bytes, name: str, limit: int) -> None:
    if len(data) > limit:
        raise HTTPException(413, f"{name}: larger than the upload limit of {limit / 2**20:.1f} MiB")


async def decode_upload(data: bytes, name: str):
    """Decoded on a worker thread (a large image takes a while); unreadable -> 400 with the reason."""
    try:
        return await run_in_threadpool(decode_image_bytes, data, name)
    except DataError as err:
        raise HTTPException(400, str(err)) from None


async def decode_audio_upload(data: bytes, name: str):
    """An audio file -> (N,) float32 at 16 kHz, decoded on a worker thread; empty, unreadable, too
    long or silent -> 400 with the reason (the same reader and limits as indexing)."""
    try:
        return await run_in_threadpool(decode_audio_bytes, data, name)
    except DataError as err:
        raise HTTPException(400, str(err)) from None


def b64_bytes(text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise HTTPException(400, "image: not valid base64") from None
