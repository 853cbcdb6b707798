"""Image-caption pairs streamed from WebDataset shards, for data that does not fit in memory.

`StreamingPairs.batches` has the shape of `ImageTextPairs.batches`, so the training loop runs on
either. An epoch:
- the shard list is shuffled (seeded by seed and epoch), dealt to the DDP ranks
  (`shards[rank::world]`) and then to the DataLoader workers (`[worker::workers]`), so each sample
  is read by exactly one worker of one rank;
- each worker reads its shards (`formats.tars`), shuffles samples in webdataset's buffer (seeded by seed,
  epoch, rank and worker), cuts its own batches, and decodes only the batches it yields, so a
  resumed run skips what it had consumed without decoding it;
- the main process puts the workers' batches in one canonical order, (batch number, worker),
  which is the order DataLoader's round robin gives in an uninterrupted epoch. A resumed epoch
  therefore continues the very same sequence, whatever worker comes first after the restart.

The position saved in a checkpoint is the number of batches consumed from each worker. Bad
shards (truncated tars), unreadable images and samples without a caption are skipped, counted in
`skips` and named in one line each.
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import json
import random
import signal
import sys
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ..modalities.image import resize_and_crop
from ..modalities.image_files import decode_image_bytes
from .formats.shards import IMAGE_EXTENSIONS, MAX_MEMBER_BYTES, ShardSet, find_shards, sample_captions
from .formats.tars import tar_samples
from .kinds import DatasetKind, detect_kind
from .pairs import Batch
from .schema import DataError, Record, SkipLog

TOKENIZER_SAMPLES = 200_000  # samples whose captions build a scratch text tower's tokenizer
PR_SET_PDEATHSIG = 1  # linux/prctl.h
HEAD_RECORDS = 2000  # records read up front to detect the dataset kind (and what hard negatives may name)


@dataclass
class _Sample:
    """One sample before decoding: its image bytes and its record (captions from the JSON or .txt)."""

    where: str  # shard:key, for messages
    image: bytes
    record: Record


@dataclass
class _WorkerBatch:
    batch: Batch | None  # None: the worker's stream has ended
    worker: int
    number: int  # the worker's batch number in this epoch
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (where, reason) since the last batch


class StreamingPairs:
    """Image-caption pairs read from WebDataset shards (see the module docstring)."""

    def __init__(self, source: str, image_size: int, workers: int = 2, shuffle_buffer: int = 1000,
                 split: str = "train", strict: bool = False, world_size: int = 1):
        self.shards: ShardSet = find_shards(source, split)
        self.image_size, self.workers, self.shuffle_buffer = image_size, workers, shuffle_buffer
        self.world_size = world_size  # DDP processes (for the length of an epoch)
        self.skips = SkipLog(strict=strict)
        self.on_skip: Callable[[str, str], None] = lambda where, why: print(f"skipped {where}: {why}", file=sys.stderr)
        self.head = [s.record for s in _first(self._samples([s.url for s in self.shards.shards], self._skip),
                                               HEAD_RECORDS)]
        if not self.head:
            raise DataError(f"{source}: no samples with an image and a caption in the shards")
        self.kind: DatasetKind = detect_kind(self.head, self.shards.meta)

    def __len__(self) -> int:
        return self.shards.samples

    def steps_per_epoch(self, batch_size: int) -> int:
        """Steps in the first epoch: each worker drops its last partial batch, and under DDP the
        ranks stop with the shortest (later epochs deal the shards anew, and may differ by a few)."""
        counts, world_size = {s.url: s.samples or 0 for s in self.shards.shards}, self.world_size
        urls, workers, local = self.epoch_shards(0, 0), max(self.workers, 1), batch_size // world_size
        return min(sum(sum(counts[u] for u in urls[rank::world_size][w::workers]) // local for w in range(workers))
                   for rank in range(world_size))


    def batches(self, batch_size: int, seed: int, epoch: int, rank: int = 0, world_size: int = 1,
                hard_negatives: int = 0, drop_last: bool = True, position: dict | None = None) -> Iterator[Batch]:
        """One epoch of this rank's batches (`batch_size` is the global batch), continuing from
        `position` (a batch's `.position`) when given. Under DDP all ranks stop when the first runs out."""
        workers = max(self.workers, 1)
        consumed = [0] * workers
        if position is not None:
            if position.get("workers") != workers:
                raise DataError(f"the checkpoint's stream position was taken with {position.get('workers')} "
                                f"loader workers; resume with --workers {position.get('workers')}")
            consumed = list(position["consumed"])
        stream = _EpochStream(self, batch_size // world_size, seed, epoch, rank, world_size, hard_negatives,
                              drop_last, consumed)
        loader = DataLoader(stream, batch_size=None, num_workers=self.workers, worker_init_fn=_die_with_parent)
        ordered = self._in_stream_order(loader, workers, consumed)
        synced = world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized()
        return _until_any_rank_ends(ordered) if synced else ordered

    def epoch_shards(self, seed: int, epoch: int) -> list[str]:
        urls = [s.url for s in self.shards.shards]
        random.Random(f"{seed}/{epoch}").shuffle(urls)
        return urls

    def _in_stream_order(self, loader, workers: int, consumed: list[int]) -> Iterator[Batch]:
        """Yield the workers' batches ordered by (batch number, worker); each waits until every
        worker still streaming has its next batch in hand (at most one round of the loader)."""
        queues: dict[int, deque] = {w: deque() for w in range(workers)}
        active = set(queues)
        for item in loader:
            for where, why in item.skipped:
                self._skip(where, why)
            queues[item.worker].append(item)
            while active and all(queues[w] for w in active):
                worker = min(active, key=lambda w: (queues[w][0].batch is None, queues[w][0].number, w))
                head = queues[worker].popleft()
                if head.batch is None:
                    active.discard(worker)
                    continue
                consumed[worker] = head.number + 1
                head.batch.position = {"workers": workers, "consumed": list(consumed)}
                yield head.batch

    def _skip(self, where: str, why: str) -> None:
        self.skips.skip(where, why)
        self.on_skip(where, why)

    def _samples(self, urls: list[str], skip: Callable[[str, str], None]) -> Iterator[_Sample]:
        """Usable samples of `urls` in shard order; bad shards and samples go to `skip`."""
        for url in urls:
            for key, files in tar_samples(url, skip, MAX_MEMBER_BYTES):
                sample = _usable(f"{url}:{key}", key, files, skip)
                if sample is not None:
                    yield sample


class _EpochStream(IterableDataset):
    """What one DataLoader worker of one rank reads in one epoch (see the module docstring)."""

    def __init__(self, pairs: StreamingPairs, local_batch: int, seed: int, epoch: int, rank: int, world_size: int,
                 hard_negatives: int, drop_last: bool, consumed: list[int]):
        super().__init__()
        self.pairs, self.local_batch, self.seed, self.epoch = pairs, local_batch, seed, epoch
        self.rank, self.world_size, self.hard_negatives = rank, world_size, hard_negatives
        self.drop_last, self.consumed = drop_last, consumed

    def __iter__(self) -> Iterator[_WorkerBatch]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        urls = self.pairs.epoch_shards(self.seed, self.epoch)[self.rank::self.world_size][worker::workers]
        skipped: list[tuple[str, str]] = []
        samples = self.pairs._samples(urls, lambda where, why: skipped.append((where, why)))
        rng = random.Random(f"{self.seed}/{self.epoch}/{self.rank}/{worker}")
        buffer = self.pairs.shuffle_buffer
        # The buffer starts yielding once it holds two batches (it keeps filling up to `buffer`), so
        # an epoch starts without reading a thousand samples first.
        shuffled = wds.shuffle(buffer, initial=min(buffer, 2 * self.local_batch), rng=rng)(samples) \
            if buffer > 1 else samples
        # One sampler for the worker: it reads the records from this list, the head and then the batch.
        self._records = list(self.pairs.head)
        self._sampler = self.pairs.kind.negative_sampler(self._records) if self.hard_negatives else None
        for number, group in enumerate(_groups(shuffled, self.local_batch, self.drop_last)):
            if number < self.consumed[worker]:
                continue  # consumed before the resume: skipped without decoding
            batch = self._decode(group, random.Random(f"{self.seed}/{self.epoch}/{self.rank}/{worker}/{number}"),
                                 skipped)
            yield _WorkerBatch(batch, worker, number, skipped[:])
            skipped.clear()
        yield _WorkerBatch(None, worker, -1, skipped[:])

    def _decode(self, group: list[_Sample], rng: random.Random, skipped: list) -> Batch:
        """Decode a batch (images that fail are skipped); captions and hard negatives drawn from
        the batch's own generator, so a batch is the same whether or not others were skipped."""
        arrays, kept = [], []
        for s in group:
            try:
                arrays.append(resize_and_crop(decode_image_bytes(s.image, s.where), self.pairs.image_size))
                kept.append(s.record)
            except DataError as err:
                skipped.append((s.where, getattr(err, "reason", str(err))))
        images = torch.from_numpy(np.stack(arrays)) if arrays else torch.empty(0, 3, self.pairs.image_size,
                                                                                self.pairs.image_size,
                                                                                dtype=torch.uint8)  # (B, 3, S, S)
        captions = [rng.choice(r.text) for r in kept]
        return Batch(images, captions, self._negatives(kept, rng), [r.id for r in kept])

    def _negatives(self, records: list[Record], rng: random.Random) -> list[str] | None:
        if self._sampler is None or not records:
            return None
        first = len(self.pairs.head)
        self._records[first:] = records
        out = []
        for i in range(len(records)):
            found = self._sampler(first + i, self.hard_negatives, rng)
            out += found + [rng.choice(rng.choice(records).text) for _ in range(self.hard_negatives - len(found))]
        return out


def shard_captions(shards: ShardSet, limit: int = TOKENIZER_SAMPLES) -> Iterator[str]:
    """The captions of the first `limit` samples, read from the shards' text members only (to
    build a tokenizer: its vocabulary has long stopped growing by then, and start-up time and
    memory stay flat however large the collection)."""
    samples = (files for s in shards.shards
               for _, files in tar_samples(s.url, lambda url, why: None, MAX_MEMBER_BYTES,
                                           wanted=lambda name: name.endswith((".txt", ".json"))))
    for files in itertools.islice(samples, limit):
        yield from sample_captions(files, _meta(files))


def _usable(where: str, key: str, files: dict, skip: Callable[[str, str], None]) -> _Sample | None:
    image_key = next((k for k in IMAGE_EXTENSIONS if files.get(k) is not None), None)
    meta = _meta(files)
    captions = sample_captions(files, meta)
    if image_key is None:
        skip(where, "no image in the sample" if not any(k in files for k in IMAGE_EXTENSIONS)
             else f"an image over {MAX_MEMBER_BYTES // 2**20} MiB")
        return None
    if not captions:
        skip(where, "missing caption")
        return None
    record = Record(id=str(meta.get("id", meta.get("key", key))), text=captions,
                    attributes=meta.get("attributes") or {}, labels=meta.get("labels"))
    return _Sample(where, files[image_key], record)


def _meta(files: dict) -> dict:
    try:
        meta = json.loads(files["json"]) if files.get("json") is not None else {}
    except (ValueError, UnicodeDecodeError):
        return {}
    return meta if isinstance(meta, dict) else {}


def _groups(samples, size: int, drop_last: bool) -> Iterator[list]:
    group: list = []
    for s in samples:
        group.append(s)
        if len(group) == size:
            yield group
            group = []
    if group and not drop_last:
        yield group


def _first(items, n: int) -> list:
    out = []
    for item in items:
        out.append(item)
        if len(out) == n:
            break
    return out


def _die_with_parent(worker_id: int) -> None:
    """A worker whose trainer is killed (SIGKILL, out of memory) can hang on its full queue for
    ever; on Linux the kernel ends it with its parent (prctl PR_SET_PDEATHSIG; no library does this)."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _until_any_rank_ends(batches: Iterator[Batch]) -> Iterator[Batch]:
    """Under DDP every rank must take the same number of steps: before each step the ranks agree
    (all-reduce MIN) whether all of them still have a batch."""
    for batch in batches:
        if not _all_ranks(True):
            return
        yield batch
    _all_ranks(False)


def _all_ranks(have: bool) -> bool:
    on_gpu = torch.distributed.get_backend() == "nccl"
    flag = torch.tensor([int(have)], device="cuda" if on_gpu else "cpu")
    torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MIN)
    return bool(flag.item())
