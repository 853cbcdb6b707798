"""What the routes take from the app: the engine (503 until it is ready) and item URLs."""

from __future__ import annotations

from collections.abc import Callable

from fastapi import HTTPException, Request
from fastapi.exceptions import RequestValidationError

from .engine import Engine
from .responses import FastJSONResponse


async def engine(request: Request) -> Engine:
    return request.app.state.engine


async def ready_engine(request: Request) -> Engine:
    """The engine, or 503 while the model or index is loading (or failed to load). Async: FastAPI
    would run a plain function on its thread pool, a thread hop per request for an attribute read."""
    eng: Engine = request.app.state.engine
    if not eng.ready:
        raise HTTPException(503, f"not ready: {eng.error or 'the model and index are loading'} (see /health)",
                            headers={"Retry-After": "1"})
    return eng


async def refuse_empty_fields(request: Request, names: tuple[str, ...]) -> None:
    """FastAPI reads an empty form field as absent (the default); the document says integer."""
    form = await request.form()
    empty = [name for name in names if form.get(name) == ""]
    if empty:
        raise RequestValidationError([{"type": "int_parsing", "loc": ("body", name), "input": "",
                                       "msg": "an integer, not an empty field"} for name in empty])


ITEM_FILE = "/items/{item_id}/file"  # the route of an item's file (routes/items.py)


def item_urls(request: Request) -> Callable[[int], str]:
    """item id -> the absolute URL of its file, as url_for makes it (the server's base URL, its
    root path included, then the route), built from the request alone: the fast /search path
    (fastpath.py) runs before the router."""
    base = str(request.base_url).rstrip("/")
    return lambda item_id: base + ITEM_FILE.format(item_id=item_id)


def hits_json(request: Request, hits) -> list[dict]:
    url = item_urls(request)
    return [{**h.to_json(), "url": url(h.id)} for h in hits]


def search_answer(request: Request, query: str, hits) -> FastJSONResponse:
    """A search's response (schemas.SearchResponse), through orjson without re-validation."""
    return FastJSONResponse({"query": query, "hits": hits_json(request, hits)})
