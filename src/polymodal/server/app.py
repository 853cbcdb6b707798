"""The HTTP server: `create_app(ServerConfig(index=...))` -> a FastAPI app.

Endpoints: text, image and audio search, embeddings, zero-shot classification, captions and chat (with a
generative model beside the index), health, the item files, clip-retrieval's `/knn-service` and
`/indices-list` (its ClipClient works unchanged), a search page at `/` and the OpenAPI docs at
`/docs`. Bad input is a 4xx with a reason, never a 500, and every status and content type the
server sends is in the OpenAPI document.
"""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager, suppress
from pathlib import Path

from fastapi import Depends, FastAPI, HTTPException
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import FileResponse

from . import security
from .config import ServerConfig, is_loopback  # noqa: F401  (the public names: `from polymodal.server.app import ...`)
from .engine import Engine
from .fastpath import FastSearch
from .responses import errors, http_error, validation_error
from .routes import generate, health, items, knn, search

STATIC = Path(__file__).parent / "static"


def create_app(cfg: ServerConfig, model=None, generator=None) -> FastAPI:
    """The app for one index. `model` and `generator` skip loading (tests pass in-memory models);
    the rest loads in the background once the app starts, and /health says when it is ready."""
    engine = Engine(cfg, model, generator)
    app = FastAPI(title="polymodal search", version="1", lifespan=lifespan,
                  description=f"Search the index at {cfg.index} ({engine.manifest['model_id']}).")
    app.state.engine = engine
    protected = {}
    if cfg.api_key:
        protected = {"dependencies": [Depends(security.key_checker(cfg.api_key))],
                     "responses": errors({401: "Missing or wrong API key."})}
    app.include_router(health.router)
    routers = (search.router, items.router, knn.build_router(int(engine.manifest["dim"])),
               generate.build_router(cfg.max_images))
    for router in routers:
        app.include_router(router, **protected)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.openapi = lambda: openapi_document(app)
    app.add_api_route("/", search_page, include_in_schema=False)
    app.add_middleware(FastSearch)
    return app


def search_page() -> FileResponse:
    """The page, as a route rather than a static mount at /: a mount there would answer every
    method on every path, and hide the API's 405s (with their Allow header) behind its own."""
    return FileResponse(STATIC / "index.html")


@asynccontextmanager
async def lifespan(app: FastAPI):
    engine: Engine = app.state.engine
    engine.start()
    tasks = [asyncio.create_task(asyncio.to_thread(engine.load))]
    if engine.cfg.reload_interval_s:
        tasks.append(asyncio.create_task(engine.watch()))
    yield
    for task in tasks:
        task.cancel()
    with suppress(asyncio.CancelledError):
        await asyncio.gather(*tasks)
    await engine.close()


def openapi_document(app: FastAPI) -> dict:
    """FastAPI's document, with the key schemes declared where the key is enforced (cached)."""
    if app.openapi_schema is None:
        document = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        app.openapi_schema = security.declare(document) if app.state.engine.cfg.api_key else document
    return app.openapi_schema
