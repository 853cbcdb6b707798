"""Queries: text, image and audio search, text, image and audio embeddings, zero-shot classification.

Every model call goes through the engine's micro-batchers (or its inference thread), never on
the event loop.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, File, Form, HTTPException, Request, UploadFile

from ...index.stages import model_modalities
from ...modalities.audio_files import AUDIO_EXTENSIONS, MAX_AUDIO_SECONDS
from .. import schemas
from ..deps import ready_engine, refuse_empty_fields, search_answer
from ..engine import Engine
from ..responses import BAD_AUDIO_UPLOAD, BAD_BODY, BAD_UPLOAD, NOT_READY
from ..uploads import decode_audio_upload, decode_upload, read_upload

router = APIRouter(responses=NOT_READY)

# The upload field: bytes of an image file (the multipart part's contentType says which kinds).
IMAGE = File(description="An image file (any format Pillow reads).", json_schema_extra={"minLength": 1})
IMAGE_PART = {"requestBody": {"content": {"multipart/form-data": {"encoding": {"file": {"contentType": "image/*"}}}}}}

# The audio upload field: what the index reads (libsndfile's formats). Its part is declared with
# the default type (application/octet-stream: any bytes, as browsers label a file of a type they do
# not know): the bytes decide. (An `audio/*` encoding, like the image routes' `image/*`, would need
# schemathesis to be given an audio strategy, as tests/test_server_openapi.py gives it images.)
AUDIO = File(description=f"An audio file ({', '.join(sorted(e[1:] for e in AUDIO_EXTENSIONS))}; at most "
                         f"{MAX_AUDIO_SECONDS:.0f} s, not silent).", json_schema_extra={"minLength": 1})
K = Form(10, ge=1, le=1000)


async def uploaded_image(request: Request, upload: UploadFile):
    data = await read_upload(upload, request.app.state.engine.cfg.max_upload_bytes)
    return await decode_upload(data, upload.filename or "upload")


async def uploaded_audio(upload: UploadFile, eng: Engine):
    """The upload as a (N,) 16 kHz waveform; 404 first when the served model cannot embed audio
    (as a route whose model is not loaded answers: the request is fine, this server cannot)."""
    if "audio" not in model_modalities(eng.model):
        raise HTTPException(404, f"the served model ({eng.manifest['model_id']}) has no audio tower: it cannot "
                                 "embed audio (serve an index built with a model that has one)")
    data = await read_upload(upload, eng.cfg.max_upload_bytes)
    return await decode_audio_upload(data, upload.filename or "upload")


@router.post("/search", response_model=schemas.SearchResponse, responses=BAD_BODY)
async def search_text(body: schemas.SearchRequest, request: Request, eng: Engine = Depends(ready_engine)):
    """Text -> the nearest items (images, and recordings in an index that holds them). (A plain JSON
    request is answered by fastpath.py before it gets here.)"""
    answer = await eng.query("text", [body.text], k=body.k)
    return search_answer(request, body.text, answer.hits[0])


@router.post("/search/image", response_model=schemas.SearchResponse, responses=BAD_UPLOAD, openapi_extra=IMAGE_PART)
async def search_image(request: Request, file: UploadFile = IMAGE, k: int = K, eng: Engine = Depends(ready_engine)):
    """Image upload -> similar images."""
    await refuse_empty_fields(request, ("k",))
    answer = await eng.query("image", [await uploaded_image(request, file)], k=k)
    return search_answer(request, file.filename or "upload", answer.hits[0])


@router.post("/search/audio", response_model=schemas.SearchResponse, responses=BAD_AUDIO_UPLOAD)
async def search_audio(request: Request, file: UploadFile = AUDIO, k: int = K, eng: Engine = Depends(ready_engine)):
    """Audio upload -> the nearest items: recordings that sound alike, or, with a model trained on
    spoken captions, the images a spoken sentence describes."""
    await refuse_empty_fields(request, ("k",))
    answer = await eng.query("audio", [await uploaded_audio(file, eng)], k=k)
    return search_answer(request, file.filename or "upload", answer.hits[0])


@router.post("/embed/text", response_model=schemas.EmbedResponse, responses=BAD_BODY)
async def embed_text(body: schemas.EmbedTextRequest, eng: Engine = Depends(ready_engine)):
    answer = await eng.query("text", body.texts)
    return {"model_id": eng.manifest["model_id"], "dim": answer.vectors.shape[1], "embeddings": answer.vectors.tolist()}


@router.post("/embed/image", response_model=schemas.EmbedResponse, responses=BAD_UPLOAD, openapi_extra=IMAGE_PART)
async def embed_image(request: Request, file: UploadFile = IMAGE, eng: Engine = Depends(ready_engine)):
    answer = await eng.query("image", [await uploaded_image(request, file)])
    return {"model_id": eng.manifest["model_id"], "dim": answer.vectors.shape[1], "embeddings": answer.vectors.tolist()}


@router.post("/embed/audio", response_model=schemas.EmbedResponse, responses=BAD_AUDIO_UPLOAD)
async def embed_audio(request: Request, file: UploadFile = AUDIO, eng: Engine = Depends(ready_engine)):
    answer = await eng.query("audio", [await uploaded_audio(file, eng)])
    return {"model_id": eng.manifest["model_id"], "dim": answer.vectors.shape[1], "embeddings": answer.vectors.tolist()}


LABELS = Form(..., pattern=schemas.TWO_LABELS, description="Comma-separated labels, two or more.")


@router.post("/classify", response_model=schemas.ClassifyResponse, responses=BAD_UPLOAD, openapi_extra=IMAGE_PART)
async def classify(request: Request, file: UploadFile = IMAGE, labels: str = LABELS,
                   eng: Engine = Depends(ready_engine)):
    """Zero-shot classification: the probability of each label for the uploaded image."""
    names = [name.strip() for name in labels.split(",") if name.strip()]
    img = await uploaded_image(request, file)
    prompts = [f"a photo of a {name}" for name in names]
    probs = (await eng.call(eng.model.similarity, [img], prompts, softmax=True))[0].tolist()
    ranked = sorted(zip(names, probs), key=lambda x: -x[1])
    return {"labels": [{"label": n, "probability": p} for n, p in ranked]}
