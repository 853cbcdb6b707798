"""Captioners scored on the splits of a dataset: one greedy caption per test image, checked fact by
fact against its scene where the records carry one (ShapesWorld's `attributes["objects"]`:
`caption_facts.score_captions`), and against the image's reference captions where they have
them (BLEU-4, CIDEr-D, METEOR: `caption_metrics.caption_metrics`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..data.pairs import ImageTextPairs
from ..data.schema import Record, RecordSet
from .caption_facts import score_captions
from .caption_metrics import caption_metrics

EVAL_SPLITS = ("test", "test_unseen")
# Images are decoded at the model's own image size; a pretrained captioner without one gets them
# at CLIP's size and resizes them again in its own processor.
DEFAULT_IMAGE_SIZE = 224


@dataclass
class CaptionedSplit:
    """One split's images with the caption generated for each (the HTML report shows a few)."""

    records: list[Record]
    images: torch.Tensor  # (N, 3, S, S) uint8
    captions: list[str]  # (N,)


def image_size(model) -> int:
    image = getattr(getattr(model, "config", None), "image", None)
    return getattr(image, "image_size", DEFAULT_IMAGE_SIZE)


def caption_split(model, data: RecordSet, split: str, limit: int | None = None,
                  progress: bool = False) -> CaptionedSplit | None:
    """Caption the first `limit` images of `split` that have a scene or reference captions to be
    scored against; None where there are none."""
    records = [r for r in data.split(split).records if r.image and ("objects" in r.attributes or r.text)][:limit]
    if not records:
        return None
    pairs = ImageTextPairs(RecordSet(data.root, records, data.skips), image_size(model), progress=progress,
                           need_text=False)
    return CaptionedSplit(pairs.records, pairs.images, model.caption(pairs.images))


def score_split(captioned: CaptionedSplit, meteor: bool = True) -> dict:
    """Fact precision / recall / CHAIR-i over the images with a scene, BLEU-4 / CIDEr-D / METEOR
    over the images with reference captions; `captions`: how many were generated."""
    out: dict = {}
    scenes = [(c, r.attributes) for c, r in zip(captioned.captions, captioned.records) if "objects" in r.attributes]
    if scenes:
        out |= score_captions([c for c, _ in scenes], [s for _, s in scenes])
    referenced = [(c, r.text) for c, r in zip(captioned.captions, captioned.records) if r.text]
    if referenced:
        out |= caption_metrics([c for c, _ in referenced], [refs for _, refs in referenced], meteor=meteor)
    out["captions"] = len(captioned.captions)
    return out


def evaluate_captioner(model, data: RecordSet, splits=EVAL_SPLITS, limit: int | None = None, progress: bool = False,
                       meteor: bool = True, captioned: dict[str, CaptionedSplit] | None = None) -> dict[str, dict]:
    """{split: its `score_split` figures} for each split of `data` with images to score; at most
    `limit` images per split. Pass a dict as `captioned` to get each split's captions back."""
    captioned = {} if captioned is None else captioned
    results = {}
    for split in splits:
        done = caption_split(model, data, split, limit, progress)
        if done is not None:
            captioned[split] = done
            results[split] = score_split(done, meteor)
    return results


# The caption table's figures (CLI and report), in order: column title -> result key.
CAPTION_COLUMNS = {"fact precision": "fact_precision", "fact recall": "fact_recall", "CHAIR-i": "chair_i",
                   "BLEU-4": "bleu_4", "CIDEr-D": "cider_d", "METEOR": "meteor"}


def caption_rows(results: dict) -> list[list[str]]:
    """One row of strings per captioned split: split, captions, the CAPTION_COLUMNS figures and the
    unparsed spans; '-' where a figure does not apply (no scenes, no references, no Java)."""
    rows = []
    for split, r in results.items():
        if isinstance(r, dict) and "captions" in r:
            figures = [_figure(r.get(key)) for key in CAPTION_COLUMNS.values()]
            rows.append([split, str(r["captions"]), *figures, str(r.get("unparsed_spans", "-"))])
    return rows


def _figure(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"
