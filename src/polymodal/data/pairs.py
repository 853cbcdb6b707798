"""Image-caption pairs in memory, batched for training and evaluation.

Images are decoded once into one uint8 tensor (64x64 ShapesWorld: 12 KiB an image), so an epoch
costs no decoding at all; batches are then a single fancy-index. Captions stay strings and are
tokenized per batch (the Rust tokenizer does 256 captions in about a millisecond).
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from ..modalities.image import resize_and_crop
from ..modalities.image_files import load_image
from ..utils import progress_bar
from .kinds import DatasetKind, detect_kind, read_meta
from .schema import DataError, Record, RecordSet, UnreadableFileError

MAX_IN_MEMORY_BYTES = 8 * 2**30


@dataclass
class Batch:
    images: torch.Tensor  # (B, 3, S, S) uint8
    captions: list[str]  # (B,)
    negatives: list[str] | None = None  # (B * K,) hard-negative captions, K per image
    ids: list[str] | None = None  # (B,) record ids, for logs of the sample sequence
    position: object = None  # where the epoch's stream stands after this batch (saved for a mid-epoch resume)


class ImageTextPairs:
    """The records of a RecordSet that have an image and at least one caption."""

    def __init__(self, data: RecordSet, image_size: int, progress: bool = True, need_text: bool = True):
        usable = [r for r in data.records if r.image and (r.text or not need_text)]
        if not usable:
            raise DataError(f"{data.root}: no records with an image{' and a caption' if need_text else ''}")
        nbytes = len(usable) * 3 * image_size**2
        if nbytes > MAX_IN_MEMORY_BYTES:
            raise DataError(f"{data.root}: {len(usable)} images at {image_size}px need {nbytes / 2**30:.1f} GiB "
                            f"in memory (limit {MAX_IN_MEMORY_BYTES / 2**30:.0f} GiB); train on a subset")
        arrays: list[np.ndarray | None] = [None] * len(usable)

        def decode(i: int) -> None:
            try:
                arrays[i] = resize_and_crop(load_image(data.path(usable[i].image)), image_size)
            except UnreadableFileError as err:
                data.skips.skip(str(data.path(usable[i].image)), err.reason)

        with progress_bar(progress, transient=True) as bar, ThreadPoolExecutor(2) as pool:
            task = bar.add_task("decoding images", total=len(usable))
            for _ in pool.map(decode, range(len(usable))):
                bar.advance(task)
        keep = [i for i, a in enumerate(arrays) if a is not None]
        if not keep:
            raise DataError(f"{data.root}: none of the {len(usable)} images could be read")
        self.records: list[Record] = [usable[i] for i in keep]
        self.images = torch.from_numpy(np.stack([arrays[i] for i in keep]))  # (N, 3, S, S) uint8
        # What this family of data brings beyond the pairs (hard negatives, relevance, probes).
        self.kind: DatasetKind = detect_kind(self.records, read_meta(data.root))
        self.sample_negatives = self.kind.negative_sampler(self.records)

    def __len__(self) -> int:
        return len(self.records)

    def batches(self, batch_size: int, seed: int, epoch: int, rank: int = 0, world_size: int = 1,
                hard_negatives: int = 0, drop_last: bool = True, position: int | None = None) -> Iterator[Batch]:
        """One shuffled epoch. `batch_size` is the global batch; each rank gets its slice of it,
        so N processes see exactly the batches one process would. `hard_negatives`: counterfactual
        captions per image, where the dataset kind has a sampler for them (ShapesWorld).
        `position` (a batch's `.position`): continue the epoch after that batch."""
        epoch_batches = self._epoch(batch_size, seed, epoch, rank, world_size, hard_negatives, drop_last)
        # The batches before `position` are still drawn (cheap: no decoding), so that the caption
        # draws after it are those of an uninterrupted epoch.
        return itertools.islice(epoch_batches, position or 0, None)

    def _epoch(self, batch_size: int, seed: int, epoch: int, rank: int, world_size: int, hard_negatives: int,
               drop_last: bool) -> Iterator[Batch]:
        rng = random.Random(f"{seed}/{epoch}")
        order = list(range(len(self)))
        rng.shuffle(order)
        stop = len(order) - len(order) % batch_size if drop_last else len(order)
        for start in range(0, stop, batch_size):
            window = order[start:start + batch_size]  # the global batch; every rank draws for all of it
            captions = [rng.choice(self.records[i].text) for i in window][rank::world_size]
            negatives = None
            if self.sample_negatives and hard_negatives:
                # The same count per image, so every rank gathers the same count; a scene with
                # fewer valid counterfactuals is topped up with other images' captions.
                per_image = [self._negatives(i, hard_negatives, rng) for i in window][rank::world_size]
                negatives = [caption for group in per_image for caption in group]
            mine = window[rank::world_size]
            yield Batch(self.images[mine], captions, negatives, [self.records[i].id for i in mine],
                        position=start // batch_size + 1)

    def _negatives(self, index: int, count: int, rng: random.Random) -> list[str]:
        found = self.sample_negatives(index, count, rng)
        return found + [rng.choice(self.records[rng.randrange(len(self))].text) for _ in range(count - len(found))]

    def steps_per_epoch(self, batch_size: int) -> int:
        return len(self) // batch_size
