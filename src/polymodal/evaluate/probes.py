"""Compositional probes: does the model prefer an image's true caption over the same caption with
one thing changed? The dataset kind builds the pairs and groups (ShapesWorld, from each scene;
`data/synthetic/shapes.py`); this module scores them. ShapesWorld's families:

- ARO (Yuksekgonul et al., 2023): attribute binding (two objects' colours exchanged) and relation
  order (the two sides of a relation exchanged);
- SugarCrepe-style families (Hsieh et al., 2023), counted separately: replace an attribute, an
  object or a relation; swap two attributes or two objects; add an attribute that is not there;
- Winoground-style groups (Thrush et al., 2022): two images and two captions with the same words,
  where each caption must pick its own image and each image its own caption.

Both captions of a pair are built in the same canonical wording, so they differ in the change
alone. A bag-of-words model scores the two captions of a swap the same and so sits at chance (50 %).
"""

from __future__ import annotations

import torch

from ..data.kinds import DatasetKind, detect_kind

TIE = 1e-5  # cosine similarities closer than this are a tie


def probe_pairs(records, family: str,
                dataset_kind: DatasetKind | None = None) -> tuple[list[int], list[str], list[str]]:
    """(image indices, true captions, false captions) for the records where `family` applies."""
    dataset_kind = dataset_kind or detect_kind(records)
    idx, true, false = [], [], []
    for i, r in enumerate(records):
        pair = dataset_kind.probe_pair(r, family)
        if pair is not None:
            idx.append(i)
            true.append(pair[0])
            false.append(pair[1])
    return idx, true, false


def _wins(diff: torch.Tensor) -> torch.Tensor:
    """1 where the true side scores higher, 0.5 on a tie (a bag of words ties up to rounding)."""
    return (diff > TIE).float() + 0.5 * (diff.abs() <= TIE).float()


def caption_scores(model, image_emb: torch.Tensor, texts: list[str]) -> torch.Tensor:
    """(P, E) image embeddings and P captions -> (P,) the similarity of each image to its caption."""
    return (image_emb * model.encode_text(texts)).sum(1)


def run_probes(model, image_emb: torch.Tensor, records, dataset_kind: DatasetKind | None = None) -> dict:
    """Accuracy of each probe family of the records' kind on the images `image_emb` of `records`."""
    dataset_kind = dataset_kind or detect_kind(records)
    out = {}
    for family in dataset_kind.probe_families:
        idx, true, false = probe_pairs(records, family, dataset_kind)
        if not idx:
            continue
        diff = caption_scores(model, image_emb[idx], true) - caption_scores(model, image_emb[idx], false)
        out[family] = {"accuracy": float(_wins(diff).mean()), "n": len(idx), "example": [true[0], false[0]]}
    return out


def winoground_items(records, kind: str, limit: int, image_size: int = 64,
                     dataset_kind: DatasetKind | None = None) -> list:
    """Up to `limit` Winoground-style groups ((image0, caption0), (image1, caption1)) of `kind`
    from `records`."""
    dataset_kind = dataset_kind or detect_kind(records)
    items = []
    for r in records:
        item = dataset_kind.winoground_item(r, kind, image_size)
        if item is not None:
            items.append(item)
            if len(items) == limit:
                break
    return items


def run_winoground(model, records, limit: int = 500, dataset_kind: DatasetKind | None = None) -> dict:
    """Text, image and group scores per kind and over all groups (Winoground's three scores)."""
    dataset_kind = dataset_kind or detect_kind(records)
    out, groups = {}, []
    for kind in dataset_kind.winoground_kinds:
        items = winoground_items(records, kind, limit, dataset_kind=dataset_kind)
        if not items:
            continue
        img = model.encode_image([im for pair in items for im, _ in pair]).view(len(items), 2, -1)  # (G, 2, E)
        txt = model.encode_text([c for pair in items for _, c in pair]).view(len(items), 2, -1)  # (G, 2, E)
        s = torch.einsum("gie,gce->gic", img, txt)  # (G, image, caption)
        text_ok = (s[:, 0, 0] - s[:, 0, 1] > TIE) & (s[:, 1, 1] - s[:, 1, 0] > TIE)  # each image picks its caption
        image_ok = (s[:, 0, 0] - s[:, 1, 0] > TIE) & (s[:, 1, 1] - s[:, 0, 1] > TIE)  # each caption picks its image
        group = text_ok & image_ok
        groups.append(group)
        out[kind] = {"text": float(text_ok.float().mean()), "image": float(image_ok.float().mean()),
                     "group": float(group.float().mean()), "n": len(items)}
    if groups:
        out["group"] = float(torch.cat(groups).float().mean())
    return out
