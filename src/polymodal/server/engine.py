"""The server's engine: the model and the index snapshot it serves.

Loading happens off the event loop (the server answers /health meanwhile, as not ready). Queries
go through one micro-batcher per kind of input (text, image, audio, vector) onto one inference thread:
torch parallelises each forward pass itself, and that thread is also the only one that touches
the index's SQLite connection. A watcher swaps in a new snapshot when the index changes on disk.
An optional generative model (a captioner or a chat model) decodes on that same thread, one call
or one streamed piece at a time, in turn with the batches.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from ..backends import load_model
from ..errors import CheckpointError
from ..index.store import Hit, Index
from .batcher import MicroBatcher
from .config import ServerConfig
from .snapshot import IndexSnapshot, disk_signature

log = logging.getLogger(__name__)
KINDS = ("text", "image", "audio", "vector")


@dataclass(frozen=True)
class Query:
    inputs: list  # texts, PIL images, (N,) 16 kHz waveforms or vectors
    k: int | None = None  # None: embed only


@dataclass(frozen=True)
class Answer:
    vectors: np.ndarray  # (len(inputs), D) unit vectors
    hits: list[list[Hit]] | None  # per input, best first (None without k)


class Engine:
    def __init__(self, cfg: ServerConfig, model=None, generator=None):
        self.cfg, self.root = cfg, Path(cfg.index)
        with Index.open(self.root) as index:  # a missing or damaged index fails now, not in the background
            self.manifest = dict(index.manifest)
        self.name = cfg.name or self.root.resolve().name
        self.model = model
        self.generator = generator  # captions and chats (None: none configured, or not loaded yet)
        self.snapshot: IndexSnapshot | None = None
        self.error: str | None = None  # why loading or the last reload failed
        self._failed_signature: tuple | None = None
        self.executor: ThreadPoolExecutor | None = None  # made by start(), with the batchers
        self.batchers: dict[str, MicroBatcher] = {}

    @property
    def ready(self) -> bool:
        generator_ready = self.generator is not None or not self.cfg.generator
        return self.model is not None and self.snapshot is not None and generator_ready

    @property
    def status(self) -> str:
        return "ok" if self.ready else "failed" if self.error else "loading"

    # -- loading -----------------------------------------------------------------------------------

    def start(self) -> None:
        """At each start of the app: the inference thread and the batchers (they belong to the
        event loop that runs the app; `load` then loads what is not loaded yet)."""
        self.error = None
        self._torch_threads = torch.get_num_threads()  # put back on close: new threads inherit it
        # The index search's BLAS too (one setting for the process): OpenBLAS's own threads,
        # spinning against torch's and the HTTP loop, made a (4, D) x (D, 2000) product take 6.6 ms
        # instead of 0.4 on 2 busy cores.
        self._blas_limits = threadpool_limits(self.cfg.threads, user_api="blas") if self.cfg.threads else None
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="polymodal-inference",
                                           initializer=self._limit_torch_threads)
        self.batchers = {kind: MicroBatcher(partial(self._run_batch, kind), self.executor, self.cfg.max_batch,
                                            self.cfg.max_wait_ms / 1000) for kind in KINDS}

    def _limit_torch_threads(self) -> None:
        """On the inference thread itself: torch's OpenMP setting belongs to the thread that makes it."""
        if self.cfg.threads:
            torch.set_num_threads(self.cfg.threads)

    def load(self) -> None:
        """Model, index, then the generator if one is configured (blocking: run it on a thread).
        A failure is kept for /health."""
        try:
            if self.model is None:
                self.model = load_model(self.cfg.model or self.manifest["model"])
            self.snapshot = IndexSnapshot.load(self.root, self.model, generation=1)
            if self.generator is None and self.cfg.generator:
                self.generator = load_generator(self.cfg.generator)
        except Exception as err:
            self.error = f"{type(err).__name__}: {err}"
            log.error("polymodal serve: loading failed: %s", self.error)

    async def watch(self) -> None:
        """Check the index on disk every reload_interval_s; reload it when it changed."""
        while True:
            await asyncio.sleep(self.cfg.reload_interval_s)
            if self.ready:
                signature = await asyncio.to_thread(disk_signature, self.root)
                if signature not in (self.snapshot.signature, self._failed_signature):
                    await self.reload(signature)

    async def reload(self, signature: tuple | None = None) -> bool:
        """Open the index again and swap it in whole; on failure keep serving the old one."""
        old = self.snapshot
        try:
            new = await asyncio.to_thread(IndexSnapshot.load, self.root, self.model, old.generation + 1)
        except Exception as err:
            self.error, self._failed_signature = f"reload failed: {type(err).__name__}: {err}", signature
            log.warning("polymodal serve: %s (still serving the index loaded before)", self.error)
            return False
        self.snapshot, self.error = new, None  # one assignment: each batch sees the old or the new, whole
        self.executor.submit(old.index.close)  # queued behind the batches that may still hold it
        log.info("polymodal serve: index reloaded (%d items)", new.info["items"])
        return True

    async def close(self) -> None:
        for batcher in self.batchers.values():
            await batcher.close()
        await asyncio.to_thread(self.executor.shutdown)
        if self.snapshot is not None:
            self.snapshot.index.close()
            self.snapshot = None  # a restarted app opens the index again
        torch.set_num_threads(self._torch_threads)
        if self._blas_limits is not None:
            self._blas_limits.restore_original_limits()

    # -- queries -----------------------------------------------------------------------------------

    async def query(self, kind: str, inputs: Sequence[Any], k: int | None = None) -> Answer:
        """Embed `inputs` (and search the index for the k nearest of each) in a shared batch."""
        return await self.batchers[kind].submit(Query(list(inputs), k), size=len(inputs))

    async def call(self, fn: Callable, *args, **kwargs) -> Any:
        """Run `fn` on the inference thread, in turn with the batches."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, partial(fn, *args, **kwargs))

    async def item(self, item_id: int) -> tuple | None:
        return await self.call(lambda: self.snapshot.index.item_by_id(item_id))

    def _run_batch(self, kind: str, queries: Sequence[Query]) -> list[Answer]:
        """On the inference thread: one forward pass for every input, one search for every query with k."""
        vectors = self._encode(kind, [x for q in queries for x in q.inputs])  # (N, D)
        ends = np.cumsum([len(q.inputs) for q in queries])
        spans = [range(end - len(q.inputs), end) for q, end in zip(queries, ends)]
        wanted = [i for q, span in zip(queries, spans) if q.k for i in span]
        found = dict(zip(wanted, self.snapshot.index.search_vectors(vectors[wanted], max(q.k or 0 for q in queries))
                         if wanted else []))
        return [Answer(vectors[span.start:span.stop], [found[i][:q.k] for i in span] if q.k else None)
                for q, span in zip(queries, spans)]

    def _encode(self, kind: str, inputs: list) -> np.ndarray:
        if kind == "text":
            return self.model.encode_text(inputs).cpu().numpy()
        if kind == "image":
            return self.model.encode_image(inputs).cpu().numpy()
        if kind == "audio":
            return self.model.encode_audio(inputs).cpu().numpy()
        return unit_rows(np.asarray(inputs, dtype=np.float64))


def load_generator(source: str):
    """A model that captions (`caption`), chats (`chat_stream`) or draws (`generate`), or an error
    naming what it is."""
    model = load_model(source)
    if not any(hasattr(model, method) for method in ("caption", "chat_stream", "generate")):
        raise CheckpointError(f"{source}: not a generative model ({type(model).__name__} neither captions, "
                              "chats nor generates images)")
    return model


def unit_rows(x: np.ndarray) -> np.ndarray:
    """(N, D) -> float32 rows of length 1 (scaled first, so huge values do not overflow; zeros stay zero)."""
    x = x / np.maximum(np.abs(x).max(axis=1, keepdims=True), 1e-300)
    return (x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)).astype(np.float32)
