"""What the routes take from the app: the engine (503 until it is ready) and item URLs."""

from __future__ import annotations

from fastapi import HTTPException, Request

from .engine import Engine


def engine(request: Request) -> Engine:
    return request.app.state.engine


def ready_engine(request: Request) -> Engine:
    """The engine, or 503 while the model or index is loading (or failed to load)."""
    eng: Engine = request.app.state.engine
    if not eng.ready:
        raise HTTPException(503, f"not ready: {eng.error or 'the model and index are loading'} (see /health)",
                            headers={"Retry-After": "1"})
    return eng


def item_url(request: Request, item_id: int) -> str:
    return str(request.url_for("item_file", item_id=item_id))


def hits_json(request: Request, hits) -> list[dict]:
    return [{**h.to_json(), "url": item_url(request, h.id)} for h in hits]
