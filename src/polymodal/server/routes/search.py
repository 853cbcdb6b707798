"""Queries: text and image search, text and image embeddings, zero-shot classification.

Every model call goes through the engine's micro-batchers (or its inference thread), never on
the event loop.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, File, Form, Request, UploadFile

from .. import schemas
from ..deps import ready_engine, refuse_empty_fields, search_answer
from ..engine import Engine
from ..responses import BAD_BODY, BAD_UPLOAD, NOT_READY
from ..uploads import decode_upload, read_upload

router = APIRouter(responses=NOT_READY)

# The upload field: bytes of an image file (the multipart part's contentType says which kinds).
IMAGE = File(description="An image file (any format Pillow reads).", json_schema_extra={"minLength": 1})
IMAGE_PART = {"requestBody": {"content": {"multipart/form-data": {"encoding": {"file": {"contentType": "image/*"}}}}}}


async def uploaded_image(request: Request, upload: UploadFile):
    data = await read_upload(upload, request.app.state.engine.cfg.max_upload_bytes)
    return await decode_upload(data, upload.filename or "upload")


@router.post("/search", response_model=schemas.SearchResponse, responses=BAD_BODY)
async def search_text(body: schemas.SearchRequest, request: Request, eng: Engine = Depends(ready_engine)):
    """Text -> images. (A plain JSON request is answered by fastpath.py before it gets here.)"""
    answer = await eng.query("text", [body.text], k=body.k)
    return search_answer(request, body.text, answer.hits[0])


@router.post("/search/image", response_model=schemas.SearchResponse, responses=BAD_UPLOAD, openapi_extra=IMAGE_PART)
async def search_image(request: Request, file: UploadFile = IMAGE, k: int = Form(10, ge=1, le=1000),
                       eng: Engine = Depends(ready_engine)):
    """Image upload -> similar images."""
    await refuse_empty_fields(request, ("k",))
    answer = await eng.query("image", [await uploaded_image(request, file)], k=k)
    return search_answer(request, file.filename or "upload", answer.hits[0])


@router.post("/embed/text", response_model=schemas.EmbedResponse, responses=BAD_BODY)
async def embed_text(body: schemas.EmbedTextRequest, eng: Engine = Depends(ready_engine)):
    answer = await eng.query("text", body.texts)
    return {"model_id": eng.manifest["model_id"], "dim": answer.vectors.shape[1], "embeddings": answer.vectors.tolist()}


@router.post("/embed/image", response_model=schemas.EmbedResponse, responses=BAD_UPLOAD, openapi_extra=IMAGE_PART)
async def embed_image(request: Request, file: UploadFile = IMAGE, eng: Engine = Depends(ready_engine)):
    answer = await eng.query("image", [await uploaded_image(request, file)])
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
