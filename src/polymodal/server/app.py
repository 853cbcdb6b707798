"""The HTTP server: `create_app(ServerConfig(index=...))` -> a FastAPI app.

Endpoints: text and image search, embeddings, zero-shot classification, health, the item files,
clip-retrieval's `/knn-service` and `/indices-list` (its ClipClient works unchanged), a search page
at `/` and the OpenAPI docs at `/docs`. Bad input is a 4xx with a reason, never a 500.
"""

from __future__ import annotations

import base64
import binascii
import io
import ipaddress
import secrets
import threading
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

from fastapi import Depends, FastAPI, File, Form, HTTPException, Request, UploadFile
from fastapi.responses import FileResponse, JSONResponse
from fastapi.security import APIKeyHeader, APIKeyQuery, HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from ..index.store import Index, ModelMismatchError
from . import schemas

STATIC = Path(__file__).parent / "static"
KNN_SCHEMA = schemas.KnnRequest.model_json_schema()


@dataclass(frozen=True)
class ServerConfig:
    """One set of options shared by `polymodal serve` and `create_app`."""

    index: str
    model: Optional[str] = None  # default: the model named in the index manifest
    api_key: Optional[str] = None
    host: str = "127.0.0.1"
    max_upload_bytes: int = 10 * 2**20
    name: Optional[str] = None  # the index name clip-retrieval clients use (default: the folder name)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Engine:
    """The loaded index and model; one lock, because a SQLite connection is shared by the threads."""

    def __init__(self, cfg: ServerConfig, model=None):
        from .. import load

        self.index = Index.open(cfg.index)
        self.model = model if model is not None else load(cfg.model or self.index.manifest["model"])
        self.index.check_model(self.model)
        self.index.vectors()  # build or load the FAISS index now, not on the first query
        self.lock = threading.Lock()
        self.name = cfg.name or Path(cfg.index).resolve().name

    def search_vectors(self, queries, k: int):
        with self.lock:
            return self.index.search_vectors(queries, k)

    def item(self, item_id: int):
        with self.lock:
            return self.index.item_by_id(item_id)


def create_app(cfg: ServerConfig, model=None) -> FastAPI:
    """The app for one index. `model` skips loading (tests pass an in-memory model)."""
    if not is_loopback(cfg.host) and not cfg.api_key:
        raise ValueError(f"listening on {cfg.host} (beyond loopback) requires an API key (--api-key)")
    engine = Engine(cfg, model)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        engine.index.close()

    app = FastAPI(title="polymodal search", version="1", lifespan=lifespan,
                  description=f"Search the index at {cfg.index} ({engine.index.model_id}).")
    app.state.engine = engine
    require_key = _key_checker(cfg.api_key)

    @app.exception_handler(ModelMismatchError)
    async def mismatch(_, err):
        return JSONResponse({"detail": str(err)}, status_code=409)

    @app.exception_handler(ValueError)
    async def bad_value(_, err):
        return JSONResponse({"detail": str(err)}, status_code=400)

    def hits_json(request: Request, hits) -> list[dict]:
        return [{**h.to_json(), "url": str(request.url_for("item_file", item_id=h.id))} for h in hits]

    async def read_image(upload: UploadFile):
        data = await upload.read(cfg.max_upload_bytes + 1)
        return decode_image(data, upload.filename or "upload", cfg.max_upload_bytes)

    def embed_image(img):
        return engine.model.encode_image([img]).cpu().numpy()

    @app.get("/health", response_model=schemas.Health)
    def health():
        info = engine.index.info()
        return {"status": "ok", "items": info["items"], "model_id": info["model_id"], "dim": info["dim"],
                "kind": info["kind"]}

    @app.post("/search", response_model=schemas.SearchResponse, dependencies=[Depends(require_key)])
    def search_text(body: schemas.SearchRequest, request: Request):
        """Text -> images."""
        query = engine.model.encode_text([body.text]).cpu().numpy()
        return {"query": body.text, "hits": hits_json(request, engine.search_vectors(query, body.k)[0])}

    @app.post("/search/image", response_model=schemas.SearchResponse, dependencies=[Depends(require_key)])
    async def search_image(request: Request, file: UploadFile = File(...), k: int = Form(10, ge=1, le=1000)):
        """Image upload -> similar images."""
        query = embed_image(await read_image(file))
        return {"query": file.filename or "upload", "hits": hits_json(request, engine.search_vectors(query, k)[0])}

    @app.post("/embed/text", response_model=schemas.EmbedResponse, dependencies=[Depends(require_key)])
    def embed_text(body: schemas.EmbedTextRequest):
        vectors = engine.model.encode_text(body.texts).cpu().numpy()
        return {"model_id": engine.index.model_id, "dim": engine.index.dim, "embeddings": vectors.tolist()}

    @app.post("/embed/image", response_model=schemas.EmbedResponse, dependencies=[Depends(require_key)])
    async def embed_image_route(file: UploadFile = File(...)):
        vectors = embed_image(await read_image(file))
        return {"model_id": engine.index.model_id, "dim": engine.index.dim, "embeddings": vectors.tolist()}

    @app.post("/classify", response_model=schemas.ClassifyResponse, dependencies=[Depends(require_key)])
    async def classify(file: UploadFile = File(...), labels: str = Form(..., description="Comma-separated labels.")):
        """Zero-shot classification: the probability of each label for the uploaded image."""
        names = [name.strip() for name in labels.split(",") if name.strip()]
        if len(names) < 2:
            raise HTTPException(400, "give at least two comma-separated labels")
        img = await read_image(file)
        prompts = [f"a photo of a {name}" for name in names]
        probs = engine.model.similarity([img], prompts, softmax=True)[0].tolist()
        ranked = sorted(zip(names, probs), key=lambda x: -x[1])
        return {"labels": [{"label": n, "probability": p} for n, p in ranked]}

    @app.get("/items/{item_id}/file", name="item_file", dependencies=[Depends(require_key)])
    def item_file(item_id: int):
        """The indexed file itself (the result grid's thumbnails)."""
        row = engine.item(item_id)
        if row is None:
            raise HTTPException(404, f"no item {item_id}")
        if not Path(row[0]).is_file():
            raise HTTPException(410, f"item {item_id}: {row[0]} is gone from disk")
        return FileResponse(row[0])

    # -- clip-retrieval's back end ----------------------------------------------------------------

    @app.get("/indices-list", dependencies=[Depends(require_key)])
    def indices_list() -> List[str]:
        return [engine.name]

    @app.post("/knn-service", dependencies=[Depends(require_key)],
              openapi_extra={"requestBody": {"content": {"application/json": {"schema": KNN_SCHEMA}}}})
    async def knn_service(request: Request):
        """clip-retrieval's query: text, base64 image or an embedding -> [{id, similarity, url, caption}]."""
        # Parsed by hand: ClipClient posts its JSON without a Content-Type header.
        try:
            body = schemas.KnnRequest.model_validate_json(await request.body())
        except ValidationError as err:
            raise HTTPException(422, f"not a knn-service request: {err.errors()[0]['msg']}") from None
        return await run_in_threadpool(knn_search, body, request)

    def knn_search(body: schemas.KnnRequest, request: Request) -> list[dict]:
        if body.indice_name not in (None, engine.name):
            raise HTTPException(404, f"unknown index '{body.indice_name}' (this server has '{engine.name}')")
        if body.modality != "image":
            raise HTTPException(400, "this index holds images only (modality 'image')")
        if body.text:
            query = engine.model.encode_text([body.text]).cpu().numpy()
        elif body.image:
            query = embed_image(decode_image(_b64(body.image), "image", cfg.max_upload_bytes))
        elif body.embedding_input:
            import numpy as np

            query = np.asarray([body.embedding_input], np.float32)
            query /= max(float(np.linalg.norm(query)), 1e-12)
        elif body.image_url:
            raise HTTPException(400, "image_url is not supported (the server fetches nothing); send 'image' as base64")
        else:
            raise HTTPException(400, "give one of text, image (base64) or embedding_input")
        hits = engine.search_vectors(query, min(body.num_images, body.num_result_ids or body.num_images))[0]
        return [{"id": h.id, "similarity": h.score, "url": url, "caption": h.caption or "", "image_path": h.path}
                for h, url in zip(hits, (str(request.url_for("item_file", item_id=h.id)) for h in hits))]

    app.mount("/", StaticFiles(directory=STATIC, html=True), name="page")
    return app


def decode_image(data: bytes, name: str, limit: int):
    """Upload bytes -> RGB PIL image, or a 4xx naming the reason."""
    from PIL import Image, UnidentifiedImageError

    if len(data) > limit:
        raise HTTPException(413, f"{name}: larger than the upload limit of {limit / 2**20:.1f} MiB")
    if not data:
        raise HTTPException(400, f"{name}: empty upload")
    try:
        with Image.open(io.BytesIO(data)) as img:
            return img.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise HTTPException(400, f"{name}: not a readable image ({err.__class__.__name__})") from None


def _b64(text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise HTTPException(400, "image: not valid base64") from None


def _key_checker(api_key: Optional[str]):
    """A dependency accepting the key as `X-API-Key`, `Authorization: Bearer`, or `?api_key=` (for <img src>)."""
    header = APIKeyHeader(name="X-API-Key", auto_error=False)
    query = APIKeyQuery(name="api_key", auto_error=False)
    bearer = HTTPBearer(auto_error=False)

    def check(h: Optional[str] = Depends(header), q: Optional[str] = Depends(query),
              b: Optional[HTTPAuthorizationCredentials] = Depends(bearer)) -> None:
        if api_key is None:
            return
        given = h or q or (b.credentials if b else None)
        if not given or not secrets.compare_digest(given.encode(), api_key.encode()):
            raise HTTPException(401, "missing or wrong API key (send X-API-Key or Authorization: Bearer)")

    return check
