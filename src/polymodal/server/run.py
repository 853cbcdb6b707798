"""Running the app under uvicorn: in this process, or in `workers` processes that share the port.

Each worker process is a whole server (its own model, index snapshot, micro-batchers and
inference thread): the HTTP parsing and JSON of one process are bound to one core by Python's
GIL, and a second process uses the second core. uvicorn starts workers from an import string,
so the config travels to them as JSON in the environment.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict

import uvicorn
from fastapi import FastAPI

from .app import create_app
from .config import ServerConfig

CONFIG_ENV = "POLYMODAL_SERVE_CONFIG"


def app_from_env() -> FastAPI:
    """The app factory each worker process calls."""
    return create_app(ServerConfig(**json.loads(os.environ[CONFIG_ENV])))


def serve(cfg: ServerConfig, port: int, log_level: str = "warning") -> None:
    """Serve until interrupted. uvicorn picks uvloop and httptools when they are installed."""
    if cfg.workers == 1:
        uvicorn.run(create_app(cfg), host=cfg.host, port=port, log_level=log_level)
        return
    os.environ[CONFIG_ENV] = json.dumps(asdict(cfg))
    uvicorn.run(f"{__name__}:app_from_env", factory=True, workers=cfg.workers, host=cfg.host, port=port,
                log_level=log_level)
