"""Captioners scored on ShapesWorld splits: greedy captions of each test image checked fact by
fact against its scene (`caption_facts.score_captions`)."""

from __future__ import annotations

from ..data.pairs import ImageTextPairs
from ..data.schema import RecordSet
from ..models.generative.captioner import Captioner
from .caption_facts import score_captions

EVAL_SPLITS = ("test", "test_unseen")


def evaluate_captioner(model: Captioner, data: RecordSet, splits=EVAL_SPLITS, limit: int | None = None,
                       progress: bool = False) -> dict[str, dict]:
    """{split: fact precision / recall / CHAIR-i summary} for each split of `data` present with
    scenes (`attributes["objects"]`); at most `limit` images per split."""
    results = {}
    for split in splits:
        records = [r for r in data.split(split).records if r.image and "objects" in r.attributes][:limit]
        if not records:
            continue
        pairs = ImageTextPairs(RecordSet(data.root, records, data.skips), model.config.image.image_size,
                               progress=progress, need_text=False)
        captions = model.caption(pairs.images)
        results[split] = score_captions(captions, [r.attributes for r in pairs.records])
    return results
