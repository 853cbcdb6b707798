"""GET /health: readiness, and what is loaded. Open without a key (probes send none)."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from ...index.stages import model_modalities
from ..deps import engine
from ..engine import Engine
from ..responses import AsciiJSONResponse
from ..schemas import Health

router = APIRouter()


@router.get("/health", response_model=Health,
            responses={503: {"model": Health, "description": "Not ready: loading, or loading failed."}})
async def health(eng: Engine = Depends(engine)):
    """200 once the model and the index are loaded and queries are answered; 503 before."""
    snap = eng.snapshot
    body = Health(status=eng.status, ready=eng.ready, model_loaded=eng.model is not None,
                  index_loaded=snap is not None, model_id=eng.manifest["model_id"], dim=int(eng.manifest["dim"]),
                  items=snap.info["items"] if snap else None, kind=snap.info["kind"] if snap else None,
                  index_generation=snap.generation if snap else 0, index_loaded_at=snap.loaded_at if snap else None,
                  error=eng.error, generator_loaded=eng.generator is not None,
                  modalities=list(model_modalities(eng.model)) if eng.model is not None else None)
    return AsciiJSONResponse(body.model_dump(), status_code=200 if eng.ready else 503)
