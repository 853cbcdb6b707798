"""ARO-style probes (Yuksekgonul et al., 2023): does the model prefer an image's true caption over
the same caption with one thing swapped?

- attribute binding: the colours of two objects exchanged ("a red circle left of a blue square"
  vs "a blue circle left of a red square");
- relation order: the two sides of a relation exchanged ("A left of B" vs "B left of A").

Both captions are built with the same random wording, so they differ in the swap alone. A
bag-of-words model scores both captions of a pair the same and so sits at chance (50 %).
"""

from __future__ import annotations

import random

import torch

from ..data.synthetic import shapes

PROBES = {"attribute_binding": "swap_colours", "relation_order": "swap_relation"}
TIE = 1e-5  # cosine similarities closer than this are a tie


def probe_pairs(records, kind: str) -> tuple[list[int], list[str], list[str]]:
    """(image indices, true captions, swapped captions) for the records where `kind` applies."""
    idx, true, false = [], [], []
    for i, r in enumerate(records):
        changed = shapes.counterfactual(r.attributes, kind, random.Random(f"probe/{r.id}"))
        if changed is None:
            continue
        # The same seed and canonical words: the same template and words for both captions.
        wording = f"wording/{r.id}"
        idx.append(i)
        true.append(shapes.describe(r.attributes["objects"], r.attributes["relations"], random.Random(wording),
                                    canonical=True))
        false.append(shapes.describe(*changed, random.Random(wording), canonical=True))
    return idx, true, false


def run_probes(model, image_emb: torch.Tensor, records) -> dict:
    out = {}
    for name, kind in PROBES.items():
        idx, true, false = probe_pairs(records, kind)
        if not idx:
            continue
        img = image_emb[idx]
        s_true = (img * model.encode_text(true)).sum(1)
        s_false = (img * model.encode_text(false)).sum(1)
        # A model that cannot tell the two apart (a bag of words scores them the same, up to
        # float rounding) is at chance: a tie counts half.
        diff = s_true - s_false
        correct = (diff > TIE).float() + 0.5 * (diff.abs() <= TIE).float()
        out[name] = {"accuracy": float(correct.mean()), "n": len(idx),
                     "example": [true[0], false[0]]}
    return out
