"""What the pipeline's stages share: the build options and the batch the encoder hands the writer.
Both the local pipeline and the Ray encoder stage import them from here, so neither imports the other."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .sources import Item


@dataclass(frozen=True)
class BuildConfig:
    """One frozen set of options shared by the CLI and the Python API."""

    source: str
    out: str
    model: str | None = None  # None: the model named in the index manifest (`index add`)
    kind: str = "auto"
    batch_size: int = 64
    shard_size: int = 1024  # items a shard; a kill loses at most one unfinished shard of work
    workers: int | None = None  # decoding threads (default: cores the encoder leaves free; 0: in line)
    prefetch: int = 4  # batches decoded ahead of the encoder
    ray: str | None = None  # None: encode here; "local" or a Ray address: on a Ray actor pool
    ray_actors: int = 2
    strict: bool = False
    progress: bool = True
    device: str = "cpu"


@dataclass
class EncodedBatch:
    """What the encoder stage hands to the writer. Items that failed carry an error instead."""

    items: list[Item]
    hashes: list[str | None]
    errors: list[str | None]
    vectors: np.ndarray  # (number of items without error, D) float32, in item order
