"""Cross-modal retrieval metrics: recall@K and median rank, in both directions.

A query is a hit at rank r when the best-ranked *relevant* item is at r. Relevance is a list of
index arrays that the dataset kind supplies, so the same code serves COCO-style evaluation (an
image is relevant to each of its own captions) and ShapesWorld (an image is relevant to every
caption whose facts it satisfies).
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import torch

from ..data.kinds import DatasetKind, detect_kind


def first_hit_ranks(queries: torch.Tensor, gallery: torch.Tensor, *relevant: list[np.ndarray],
                    chunk: int = 1024) -> list[np.ndarray]:
    """queries (Q, E), gallery (N, E); each `relevant` list gives, per query, indices into the
    gallery. Returns one (Q,) array of 1-based ranks per list. Scores are computed a chunk of
    queries at a time, so memory stays at chunk x N whatever Q is."""
    ranks = [np.empty(len(queries), dtype=np.int64) for _ in relevant]
    padded = [_pad(rel) for rel in relevant]  # (Q, K) index matrices, -1 where a list is shorter
    for start in range(0, len(queries), chunk):
        sim = queries[start:start + chunk] @ gallery.T  # (C, N)
        for out, idx in zip(ranks, padded):
            block = idx[start:start + chunk]  # (C, K)
            hits = sim.gather(1, block.clamp(min=0)).masked_fill(block < 0, -torch.inf)  # (C, K)
            best = hits.max(1).values  # (C,) score of the best-ranked relevant item
            out[start:start + chunk] = ((sim > best[:, None]).sum(1) + 1).numpy()
    return ranks


def _pad(lists: list[np.ndarray]) -> torch.Tensor:
    width = max(len(x) for x in lists)
    out = torch.full((len(lists), width), -1, dtype=torch.long)
    for i, x in enumerate(lists):
        out[i, : len(x)] = torch.as_tensor(x)
    return out


def summarize(ranks: np.ndarray, ks=(1, 5, 10)) -> dict[str, float]:
    out = {f"R@{k}": float((ranks <= k).mean()) for k in ks}
    out["median_rank"] = float(np.median(ranks))
    out["mean_rank"] = float(ranks.mean())
    return out


def relevance(records, caption_owner: np.ndarray,
              dataset_kind: DatasetKind | None = None) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(relevant images per caption, relevant captions per image), from the images that the
    dataset kind deems relevant to each image's captions (generic data: its own image only;
    ShapesWorld: every image whose scene makes the caption's facts true)."""
    n = len(records)
    images_for_image = (dataset_kind or detect_kind(records)).relevant_images(records)
    captions_of = defaultdict(list)
    for c, owner in enumerate(caption_owner):
        captions_of[owner].append(c)
    images_for_caption = [images_for_image[owner] for owner in caption_owner]
    # Caption c is relevant to image j when j is relevant to c.
    captions_for_image: list[list[int]] = [[] for _ in range(n)]
    for i in range(n):
        for j in images_for_image[i]:
            captions_for_image[j].extend(captions_of[i])
    return images_for_caption, [np.array(c) for c in captions_for_image]


def retrieval_metrics(image_emb: torch.Tensor, text_emb: torch.Tensor, caption_owner: np.ndarray,
                      records, dataset_kind: DatasetKind | None = None) -> dict[str, dict[str, float]]:
    """image_emb (N, E), text_emb (C, E) unit vectors; caption_owner[c] = index of c's image."""
    images_for_caption, captions_for_image = relevance(records, caption_owner, dataset_kind)
    # Instance-level view beside it: must the exact image be found? Its ceiling says how often a
    # caption describes more than one image of the gallery, i.e. what scene-level matching forgives.
    own_image = [np.array([o]) for o in caption_owner]
    t2i, own = first_hit_ranks(text_emb, image_emb, images_for_caption, own_image)
    (i2t,) = first_hit_ranks(image_emb, text_emb, captions_for_image)
    out = {"text_to_image": summarize(t2i), "image_to_text": summarize(i2t)}
    out["text_to_image"]["instance_R@1"] = float((own == 1).mean())
    out["text_to_image"]["instance_R@1_ceiling"] = float(np.mean([1 / len(r) for r in images_for_caption]))
    return out
