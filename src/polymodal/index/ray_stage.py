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
from .stages import BuildConfig, EncodedBatch

# torch and ray are imported where they are used: the command line imports this module to
# register `index build`, and Ray is an optional extra.


class _Encoder:
    """One model replica (a Ray actor): a batch of paths in, hashes, errors and vectors out.
    `read` is the pipeline's reader: (item, preprocess) -> (hash, tensor, error)."""

    def __init__(self, model: str, threads: int, read: Callable):
        import torch  # in the Ray worker; and `polymodal --help` must not load torch

        from ..backends import load_model

        torch.set_num_threads(threads)
        self.model, self.read = load_model(model), read

    def __call__(self, batch: dict) -> dict:
        import torch

        results = [self.read(Item(p), self.model.preprocess) for p in batch["path"]]
        tensors = [t for _, t, err in results if err is None]
        dim = self.model.embed_dim
        vectors = np.zeros((len(results), dim), np.float32)  # Ray wants one row per input row
        if tensors:
            ok = [i for i, (_, _, err) in enumerate(results) if err is None]
            vectors[ok] = self.model.encode_image(torch.cat(tensors), batch_size=len(tensors)).cpu().numpy()
        return {"path": batch["path"], "caption": batch["caption"], "vector": vectors,
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
    rows = [{"path": item.path, "caption": item.caption or ""} for batch in batches for item in batch]
    if not rows:
        return
    ds = ray.data.from_items(rows).map_batches(
        _Encoder, fn_constructor_kwargs={"model": model, "threads": 1, "read": read}, batch_size=cfg.batch_size,
        concurrency=cfg.ray_actors, num_cpus=1, batch_format="numpy")
    for out in ds.iter_batches(batch_size=cfg.batch_size, batch_format="numpy"):
        errors = [e or None for e in out["error"].tolist()]
        keep = np.array([e is None for e in errors], bool)
        items = [Item(p, c or None) for p, c in zip(out["path"].tolist(), out["caption"].tolist())]
        yield EncodedBatch(items, [h or None for h in out["hash"].tolist()], errors, out["vector"][keep])
