"""The embedding pipeline: reader -> encoder -> writer (clip-retrieval's split).

- reader: lists SOURCE lazily, keeps the media the build indexes, drops files the index already
  holds (resume), and decodes images and audio in a thread pool a few batches ahead of the encoder
  (PIL and libsndfile release the GIL while decoding);
- encoder: batched inference, here (`encode_local`) or on a Ray actor pool (`.ray.encode_ray`);
- writer: drops duplicate content, writes shards atomically and commits their rows (`Index.write_batch`).

Memory is bounded by (prefetch + 1) batches plus one shard, whatever the size of SOURCE.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections import Counter, deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..data.schema import UnreadableFileError, printable_path
from ..errors import DataError, IndexFormatError
from ..modalities.audio_files import decode_audio_bytes
from ..modalities.image_files import decode_image_bytes, read_image_bytes
from ..utils import progress_bar
from .ray_stage import encode_ray
from .sources import MEDIA, Item, count_source, iter_source
from .stages import BuildConfig, EncodedBatch, embed_decoded, model_modalities
from .store import Index


@dataclass
class BuildReport:
    added: int = 0
    already_indexed: int = 0
    duplicates: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    total: int = 0
    left_out: str | None = None  # files of a modality the model cannot embed, said once: "12 audio files (...)"

    def summary(self, limit: int = 10) -> str:
        lines = [f"added {self.added}, already indexed {self.already_indexed}, duplicates {self.duplicates}, "
                 f"skipped {len(self.skipped)}; index holds {self.total}"]
        lines += [f"  left out {self.left_out}"] if self.left_out else []
        lines += [f"  skipped {printable_path(path)}: {reason}" for path, reason in self.skipped[:limit]]
        if len(self.skipped) > limit:
            lines.append(f"  ... and {len(self.skipped) - limit} more (polymodal index info --skipped)")
        return "\n".join(lines)


# -- reader -----------------------------------------------------------------------------------------


def read_item(item: Item, preprocess) -> tuple[str | None, object, str | None]:
    """-> (content hash, decoded item, None) or (None, None, reason). An image decodes to its
    preprocessed (1, 3, S, S) tensor, an audio file to its (N,) 16 kHz waveform."""
    if item.error:
        return None, None, item.error
    try:
        data = read_image_bytes(item.path)  # the one safe reader of media files (no FIFO, no device)
        if item.modality == "audio":
            decoded = decode_audio_bytes(data, item.path)
        else:
            decoded = preprocess([decode_image_bytes(data, item.path)])
    except UnreadableFileError as err:
        return None, None, err.reason
    except (DataError, ValueError, OSError) as err:  # the model's own preprocessing refused it
        return None, None, f"cannot be preprocessed ({err.__class__.__name__})"
    return hashlib.sha1(data).hexdigest(), decoded, None


def media_items(items: Iterable[Item], media: tuple[str, ...], left_out: Counter) -> Iterator[Item]:
    """The items of the modalities this build indexes (and the source's own errors); the others are
    counted in `left_out`, by modality."""
    for item in items:
        if item.modality is None or item.modality in media:
            yield item
        else:
            left_out[item.modality] += 1


def listed_items(items: Iterable[Item], writer: ShardWriter, on_skip) -> Iterator[Item]:
    """The items a reader can try; those the source already refused go straight to the skip list."""
    for item in items:
        if item.error is None:
            yield item
        else:
            writer.skip([(item.path, item.error)])
            on_skip(1)


def pending_batches(index: Index, items: Iterable[Item], size: int, report: BuildReport,
                    on_known) -> Iterator[list[Item]]:
    """Batches of items the index does not hold yet (that is how a rerun resumes)."""
    batch: list[Item] = []

    def flush():
        known = index.known_paths([i.path for i in batch])
        if known:
            report.already_indexed += len(known)
            on_known(len(known))
        return [i for i in batch if i.path not in known]

    for item in items:
        batch.append(item)
        if len(batch) == size:
            todo = flush()
            batch = []
            if todo:
                yield todo
    if batch and (todo := flush()):
        yield todo


# -- encoder (local) ---------------------------------------------------------------------------------


def encode_local(model, batches: Iterable[list[Item]], workers: int, prefetch: int) -> Iterator[EncodedBatch]:
    """Decode in `workers` threads, a few batches ahead; with 0 workers, decode each batch just
    before encoding it. When the encoder's threads already take every core (2 cores here), decoding
    beside them only makes both wait on each other: measured, 0.65 of the encoder-only rate."""
    if workers == 0:
        for batch in batches:
            yield _encode(model, batch, [read_item(item, model.preprocess) for item in batch])
        return
    with ThreadPoolExecutor(workers) as pool:
        in_flight: deque = deque()
        batches = iter(batches)

        def submit_next() -> bool:
            batch = next(batches, None)
            if batch is None:
                return False
            in_flight.append((batch, [pool.submit(read_item, item, model.preprocess) for item in batch]))
            return True

        while len(in_flight) < prefetch and submit_next():
            pass
        while in_flight:
            batch, futures = in_flight.popleft()
            submit_next()
            yield _encode(model, batch, [f.result() for f in futures])


def _encode(model, batch: list[Item], results: list[tuple]) -> EncodedBatch:
    good = [(item.modality, decoded) for item, (_, decoded, err) in zip(batch, results) if err is None]
    vectors = embed_decoded(model, [m for m, _ in good], [d for _, d in good])
    return EncodedBatch(batch, [h for h, _, _ in results], [e for _, _, e in results], vectors)


def default_workers() -> int:
    """Decoding threads: the cores the encoder's threads leave free (0: decode in line)."""
    import torch

    return max(0, (os.cpu_count() or 1) - torch.get_num_threads())


# -- writer ------------------------------------------------------------------------------------------


class ShardWriter:
    """Buffers encoded items into shards of `shard_size`, dropping content already indexed."""

    def __init__(self, index: Index, shard_size: int, report: BuildReport, strict: bool):
        self.index, self.shard_size, self.report, self.strict = index, shard_size, report, strict
        self.buffer: list[tuple[Item, str, np.ndarray]] = []
        self.buffered_hashes: set[str] = set()

    def write(self, batch: EncodedBatch) -> None:
        rows = iter(batch.vectors)
        good = [(item, h, next(rows)) for item, h, err in zip(batch.items, batch.hashes, batch.errors) if err is None]
        self.skip([(item.path, err) for item, err in zip(batch.items, batch.errors) if err is not None])
        known = self.index.known_hashes([h for _, h, _ in good])
        for item, h, vec in good:
            if h in known or h in self.buffered_hashes:
                self.report.duplicates += 1
                continue
            self.buffer.append((item, h, vec))
            self.buffered_hashes.add(h)
        while len(self.buffer) >= self.shard_size:
            self.flush(self.shard_size)

    def skip(self, failed: list[tuple[str, str]]) -> None:
        """Record (path, reason) pairs as skipped; with `strict`, the first one stops the build."""
        if failed and self.strict:
            raise DataError(f"{printable_path(failed[0][0])}: {failed[0][1]}")
        self.index.record_skips(failed)
        self.report.skipped += failed

    def flush(self, count: int | None = None) -> None:
        """Write the first `count` buffered items (default: all) as one shard."""
        shard, self.buffer = self.buffer[:count], self.buffer[len(self.buffer[:count]):]
        if not shard:
            return
        items, hashes, vecs = zip(*shard)
        self.index.write_batch(np.stack(vecs), [i.path for i in items], [i.caption for i in items], list(hashes),
                               [i.modality for i in items])
        self.report.added += len(items)
        self.buffered_hashes.difference_update(hashes)


# -- the whole build ---------------------------------------------------------------------------------


def open_for_build(cfg: BuildConfig, model) -> Index:
    """Create the index, or reopen it to resume/add; refuse a different model."""
    out = Path(cfg.out)
    if (out / "manifest.json").exists():
        index = Index.open(out)
        index.check_model(model)
    else:
        if cfg.model is None:
            raise IndexFormatError(f"{out}: no index here (build one with --model first)")
        spec = str(Path(cfg.model).resolve()) if Path(cfg.model).exists() else cfg.model  # usable from anywhere
        index = Index.create(out, spec, model.model_id, model.embed_dim, cfg.kind)
    index.drop_orphan_shards()
    return index


HINT = {"audio": " (use a model with one: `polymodal train-audio` trains one)", "image": ""}


def choose_media(cfg: BuildConfig, model, counts: Counter | None) -> tuple[str, ...]:
    """The modalities this build indexes: `cfg.media` ("image" or "audio"), or with "auto" every one
    the model embeds. Before anything is written, one line refuses a modality the model has no tower
    for, and an "auto" build of a folder whose files are all of such a modality (which would index
    nothing)."""
    if cfg.media not in ("auto", *MEDIA):
        raise DataError(f"unknown media '{cfg.media}' (auto, image or audio)")
    embeds = tuple(m for m in MEDIA if m in model_modalities(model))
    name = model_name(cfg, model)
    if cfg.media != "auto":
        if cfg.media not in embeds:
            raise DataError(f"{name}: has no {cfg.media} tower, so it cannot index {cfg.media} files{HINT[cfg.media]}")
        return (cfg.media,)
    unusable = {m: counts[m] for m in MEDIA if counts and counts[m] and m not in embeds}
    if unusable and not any(counts[m] for m in embeds):
        kind, n = next(iter(unusable.items()))
        raise DataError(f"{printable_path(cfg.source)}: its {n} {kind} file(s) cannot be indexed: {name} has no "
                        f"{kind} tower{HINT[kind]}")
    return embeds


def model_name(cfg: BuildConfig, model) -> str:
    """The model as the user named it (`index add`: as the index records it)."""
    return cfg.model or getattr(model, "model_id", type(model).__name__)


def load_model_for(cfg: BuildConfig):
    spec = cfg.model
    if spec is None:
        if not (Path(cfg.out) / "manifest.json").exists():
            raise IndexFormatError(f"{cfg.out}: no index here (build one with --model first)")
        spec = Index.open(cfg.out).manifest["model"]
    from ..backends import load_model  # here, not at the top: `polymodal --help` must not load torch

    return load_model(spec, device=cfg.device)


def build_index(cfg: BuildConfig, model=None) -> BuildReport:
    """Embed every image and audio file of `cfg.source` (of the media `cfg.media` names) into the index
    at `cfg.out` (created, resumed or extended)."""
    model = model if model is not None else load_model_for(cfg)
    counts = count_source(cfg.source)
    media = choose_media(cfg, model, counts)
    index = open_for_build(cfg, model)
    report, left_out = BuildReport(), Counter()
    total = counts[None] + sum(counts[m] for m in media) if counts is not None else None
    with progress_bar(cfg.progress) as bar:
        task = bar.add_task("indexing", total=total)
        writer = ShardWriter(index, cfg.shard_size, report, cfg.strict)
        wanted = media_items(iter_source(cfg.source), media, left_out)
        items = listed_items(wanted, writer, on_skip=lambda n: bar.advance(task, n))
        batches = pending_batches(index, items, cfg.batch_size, report, on_known=lambda n: bar.advance(task, n))
        if cfg.ray is None:
            workers = default_workers() if cfg.workers is None else cfg.workers
            encoded = encode_local(model, batches, workers, cfg.prefetch)
        else:
            encoded = encode_ray(index.manifest["model"], batches, cfg, read_item)
        start, done = time.perf_counter(), 0
        for batch in encoded:
            writer.write(batch)
            done += len(batch.items)
            rate = done / max(time.perf_counter() - start, 1e-9)
            bar.update(task, advance=len(batch.items), description=f"indexing {rate:,.0f} items/s")
        writer.flush()
        if report.added or not (Path(cfg.out) / "vectors.faiss").exists():
            bar.update(task, description="building the FAISS index")
            index.vectors()  # now, so that the first query does not pay for it (HNSW takes minutes at 1M)
    report.total = len(index)
    index.close()
    if cfg.media == "auto" and left_out:  # said, not skipped: the files are fine, the model cannot embed them
        report.left_out = ", ".join(f"{n} {kind} file(s) ({model_name(cfg, model)} has no {kind} tower)"
                                    for kind, n in left_out.items())
    return report

