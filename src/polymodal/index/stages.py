"""What the pipeline's stages share: the build options, the embedding of decoded items and the batch
the encoder hands the writer. Both the local pipeline and the Ray encoder stage import them from
here, so neither imports the other."""

from __future__ import annotations

from collections.abc import Sequence
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
    media: str = "auto"  # auto: every image and audio file the model can embed; image or audio: only those
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


def model_modalities(model) -> tuple[str, ...]:
    """What `model` embeds; a model that does not say (a pretrained dual encoder) embeds images and text."""
    return tuple(getattr(model, "modalities", ("image", "text")))


def embed_decoded(model, modalities: Sequence[str], decoded: Sequence) -> np.ndarray:
    """Decoded items -> (len(decoded), D) float32 unit vectors in the same order: images (each a
    preprocessed (1, 3, S, S) tensor) in one forward pass, audio clips ((N,) waveforms) in another."""
    import torch  # here: `polymodal --help` imports this module and must not load torch

    vectors = np.zeros((len(decoded), model.embed_dim), np.float32)
    for modality in ("image", "audio"):
        rows = [i for i, m in enumerate(modalities) if m == modality]
        if not rows:
            continue
        inputs = [decoded[i] for i in rows]
        if modality == "image":
            vectors[rows] = model.encode_image(torch.cat(inputs), batch_size=len(rows)).cpu().numpy()  # (n, D)
        else:
            vectors[rows] = model.encode_audio(inputs, batch_size=len(rows)).cpu().numpy()  # (n, D)
    return vectors
