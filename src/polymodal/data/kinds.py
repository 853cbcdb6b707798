"""Dataset kinds: what a family of datasets brings beyond image-caption pairs.

Training and evaluation are generic: they ask the dataset's kind for the parts only that family
can supply (hard negatives, the relevance of images to captions, attribute zero-shot prompts,
compositional probes). A user's image-caption dataset is of kind "generic", which supplies none
of them, so it gets contrastive training and retrieval metrics; ShapesWorld (registered in
`data/synthetic/shapes.py`) supplies them all.

A kind is found from `dataset.json` beside the manifest (`"kind": "<name>"`, written by the
generators; `"kind": "generic"` opts out) when its records fit it, else from the records alone.
A new family subclasses `DatasetKind` and calls `DATASET_KINDS.register(name, instance)`.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..registry import Registry
from .schema import Record

META_FILE = "dataset.json"

# (record index, count, rng) -> up to `count` captions that contradict that record's image
NegativeSampler = Callable[[int, int, random.Random], list[str]]


@dataclass
class AttributeTask:
    """Zero-shot classification of several attributes at once from one set of descriptions
    (e.g. every size x colour x shape): each candidate has a value per attribute and a list of
    prompts; `images` are the record indices to classify, `truth[a][k]` the value of attribute
    `a` for image `images[k]`."""

    values: dict[str, list[str]]  # attribute -> its possible values, in report order
    candidates: list[dict[str, str]]  # (K,) attribute -> value
    prompts: list[list[str]]  # (K,) prompts of each candidate
    images: list[int]
    truth: dict[str, list[str]]


class DatasetKind:
    """The generic kind: image-caption pairs and nothing more. Subclasses override what their
    family knows."""

    name = "generic"
    probe_families: tuple[str, ...] = ()  # names of the caption-pair probes this kind builds
    winoground_kinds: tuple[str, ...] = ()  # names of its Winoground-style group kinds

    def accepts(self, records: Sequence[Record]) -> bool:
        """Do these records carry what this kind needs?"""
        return True

    def relevant_images(self, records: Sequence[Record]) -> list[np.ndarray]:
        """Per image, the images its captions describe: by default its own image only (COCO)."""
        return [np.array([i]) for i in range(len(records))]

    def negative_sampler(self, records: Sequence[Record]) -> NegativeSampler | None:
        """Hard-negative captions for training on `records`; None where the kind has none."""
        return None

    def attribute_task(self, records: Sequence[Record]) -> AttributeTask | None:
        """The kind's own zero-shot task on `records`; None: zero-shot on `labels` where present."""
        return None

    def probe_pair(self, record: Record, family: str) -> tuple[str, str] | None:
        """(true caption, false caption) differing as `family` says; None where it does not apply."""
        return None

    def winoground_item(self, record: Record, kind: str, image_size: int):
        """((image0, caption0), (image1, caption1)) built from `record`, or None."""
        return None


DATASET_KINDS: Registry[DatasetKind] = Registry("dataset kind")
GENERIC = DATASET_KINDS.register("generic", DatasetKind())


def read_meta(root: str | Path | None) -> dict:
    """The dataset's `dataset.json` ({} when there is none or it is not a JSON object)."""
    path = Path(root) / META_FILE if root is not None else None
    if path is None or not path.is_file():
        return {}
    try:
        meta = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return meta if isinstance(meta, dict) else {}


def detect_kind(records: Sequence[Record], meta: dict | None = None) -> DatasetKind:
    """The declared kind (`meta["kind"]`) if the records fit it, else the first registered
    specialised kind they fit, else the generic kind."""
    declared = (meta or {}).get("kind")
    if isinstance(declared, str) and declared in DATASET_KINDS:
        kind = DATASET_KINDS.get(declared)
        if kind.accepts(records):
            return kind
    for name in DATASET_KINDS.list():
        kind = DATASET_KINDS.get(name)
        if kind is not GENERIC and kind.accepts(records):
            return kind
    return GENERIC
