"""The encoder stage on Ray: a Ray Data map over an actor pool of model replicas.

The driver keeps the reader's resume filter and the writer, so the index it writes is the same as a
local build's; the actors decode and encode. On a cluster, SOURCE and the model must be readable at
the same paths on every node (a shared file system).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator

import numpy as np

from .sources import Item
from .stages import BuildConfig, EncodedBatch, embed_decoded

# torch and ray are imported where they are used: the command line imports this module to
# register `index build`, and Ray is an optional extra.


class _Encoder:
    """One model replica (a Ray actor): a batch of paths in, hashes, errors and vectors out.
    `read` is the pipeline's reader: (item, preprocess) -> (hash, decoded item, error)."""

    def __init__(self, model: str, threads: int, read: Callable):
        import torch  # in the Ray worker; and `polymodal --help` must not load torch

        from ..backends import load_model

        torch.set_num_threads(threads)
        self.model, self.read = load_model(model), read

    def __call__(self, batch: dict) -> dict:
        modalities = batch["modality"].tolist()
        results = [self.read(Item(p, modality=m), self.model.preprocess) for p, m in zip(batch["path"], modalities)]
        vectors = np.zeros((len(results), self.model.embed_dim), np.float32)  # Ray wants one row per input row
        ok = [i for i, (_, _, err) in enumerate(results) if err is None]
        vectors[ok] = embed_decoded(self.model, [modalities[i] for i in ok], [results[i][1] for i in ok])
        return {"path": batch["path"], "caption": batch["caption"], "modality": batch["modality"], "vector": vectors,
                "hash": np.array([h or "" for h, _, _ in results]), "error": np.array([e or "" for _, _, e in results])}


def encode_ray(model: str, batches: Iterable[list[Item]], cfg: BuildConfig, read: Callable) -> Iterator[EncodedBatch]:
    """The encoder stage on a Ray actor pool; `read` decodes an item the way a local build does."""
    try:
        import ray
    except ImportError:
        raise RuntimeError("--ray needs Ray: pip install 'polymodal[ray]'") from None

    if not ray.is_initialized():
        address = None if cfg.ray in (None, "", "local") else cfg.ray
        ray.init(address=address, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True,
                 configure_logging=False)
    ray.data.DataContext.get_current().enable_progress_bars = False  # polymodal's own bar counts the items
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    # The pending list lives on the driver (about 200 bytes an item); Ray streams the batches.
    rows = [{"path": item.path, "caption": item.caption or "", "modality": item.modality}
            for batch in batches for item in batch]
    if not rows:
        return
    ds = ray.data.from_items(rows).map_batches(
        _Encoder, fn_constructor_kwargs={"model": model, "threads": 1, "read": read}, batch_size=cfg.batch_size,
        concurrency=cfg.ray_actors, num_cpus=1, batch_format="numpy")
    for out in ds.iter_batches(batch_size=cfg.batch_size, batch_format="numpy"):
        errors = [e or None for e in out["error"].tolist()]
        keep = np.array([e is None for e in errors], bool)
        items = [Item(p, c or None, modality=m)
                 for p, c, m in zip(out["path"].tolist(), out["caption"].tolist(), out["modality"].tolist())]
        yield EncodedBatch(items, [h or None for h in out["hash"].tolist()], errors, out["vector"][keep])
