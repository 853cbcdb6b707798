"""The server's options: one frozen dataclass shared by `polymodal serve` and `create_app`."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass


@dataclass(frozen=True)
class ServerConfig:
    index: str
    model: str | None = None  # default: the model named in the index manifest
    api_key: str | None = None
    host: str = "127.0.0.1"
    max_upload_bytes: int = 10 * 2**20
    name: str | None = None  # the index name clip-retrieval clients use (default: the folder name)
    max_batch: int = 32  # queries encoded in one forward pass at most
    max_wait_ms: float = 2.0  # how long a batch may wait for as many queries as the last one had
    reload_interval_s: float = 1.0  # how often the index on disk is checked for changes (0: never)
    threads: int | None = 1  # torch and BLAS threads for inference (None: their own, all cores): see engine.load
    workers: int = 1  # server processes sharing the port, each with its own model and batchers
    generator: str | None = None  # captioner, chat or text-to-image model (polymodal.load): /caption, /chat, /generate
    max_images: int = 16  # images one /caption request may send

    def __post_init__(self):
        if not is_loopback(self.host) and not self.api_key:
            raise ValueError(f"listening on {self.host} (beyond loopback) requires an API key (--api-key)")
        if min(self.max_batch, self.workers, self.max_images) < 1 or self.max_wait_ms < 0 or self.reload_interval_s < 0:
            raise ValueError("max_batch, workers and max_images must be >= 1, max_wait_ms and reload_interval_s >= 0")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
