"""What the routes take from the app: the engine (503 until it is ready) and item URLs."""

from __future__ import annotations

from collections.abc import Callable

from fastapi import HTTPException, Request

from .engine import Engine


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


def item_urls(request: Request) -> Callable[[int], str]:
    """item id -> the URL of its file. url_for runs once per response, not once per hit: it
    searches the routes, raising an exception at each one that does not match."""
    prefix = str(request.url_for("item_file", item_id=0)).removesuffix("/0/file")
    return lambda item_id: f"{prefix}/{item_id}/file"


def hits_json(request: Request, hits) -> list[dict]:
    url = item_urls(request)
    return [{**h.to_json(), "url": url(h.id)} for h in hits]
