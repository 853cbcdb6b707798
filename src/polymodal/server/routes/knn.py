"""clip-retrieval's back end: POST /knn-service and GET /indices-list, so its ClipClient works
unchanged against this server."""

from __future__ import annotations

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from .. import schemas
from ..deps import engine, item_urls, ready_engine
from ..engine import Engine
from ..responses import BAD_BODY, NOT_READY, errors
from ..uploads import b64_bytes, check_size, decode_upload

# FastAPI declares 422 by itself only for the parameters it parses; this body is parsed here.
VALIDATION_ERROR = {"description": "Validation Error", "content": {"application/json": {
    "schema": {"$ref": "#/components/schemas/HTTPValidationError"}}}}


def build_router(dim: int) -> APIRouter:
    """The routes for an index of embedding dimension `dim` (the request schema says it)."""
    request_model = schemas.knn_request_for(dim)
    router = APIRouter()
    body_doc = {"requestBody": {"required": True, "content": {"application/json": {
        "schema": request_model.model_json_schema(ref_template="#/components/schemas/{model}")}}}}

    @router.get("/indices-list", response_model=list[str])
    async def indices_list(eng: Engine = Depends(engine)):
        return [eng.name]

    @router.post("/knn-service", response_model=list[schemas.KnnHit], openapi_extra=body_doc,
                 responses={**BAD_BODY, **errors({404: "No index of that name here.",
                                                  413: "The image is larger than the upload limit."}),
                            **NOT_READY, 422: VALIDATION_ERROR})
    async def knn_service(request: Request, eng: Engine = Depends(ready_engine)):
        """clip-retrieval's query: text, base64 image or an embedding -> [{id, similarity, url, caption}]."""
        # Parsed by hand: ClipClient posts its JSON without a Content-Type header.
        try:
            body = request_model.model_validate_json(await request.body())
        except ValidationError as err:
            raise RequestValidationError(err.errors(include_url=False)) from None
        return await knn_search(eng, body, request)

    return router


async def knn_search(eng: Engine, body: schemas.KnnRequest, request: Request) -> list[dict]:
    if body.indice_name not in (None, eng.name):
        raise HTTPException(404, f"unknown index '{body.indice_name}' (this server has '{eng.name}')")
    k = min(body.num_images, body.num_result_ids or body.num_images)
    if body.text is not None:
        answer = await eng.query("text", [body.text], k=k)
    elif body.image is not None:
        data = b64_bytes(body.image)
        check_size(data, "image", eng.cfg.max_upload_bytes)
        answer = await eng.query("image", [await decode_upload(data, "image")], k=k)
    else:
        answer = await eng.query("vector", [body.embedding_input], k=k)
    url = item_urls(request)
    return [{"id": h.id, "similarity": h.score, "url": url(h.id), "caption": h.caption or "", "image_path": h.path}
            for h in answer.hits[0]]
