"""WebDataset tar shards: writing them from any dataset (`shards.py` finds and reads them).

A converted dataset is a directory of `{split}-{n:06d}.tar` shards and `shards.json`, the index
(shard names and sample counts per split, and the dataset kind). Each sample is `{key}.{png|jpg}`,
`{key}.txt` (the first caption) and `{key}.json` (the whole record: id, split, every caption,
attributes, labels). Keys are sequence numbers: webdataset cuts a key at the first dot of a file
name, so record ids (which may hold dots) live in the JSON instead.
"""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import webdataset as wds

from ...modalities.image_files import load_image
from ...utils import atomic_path, progress_bar, write_json
from ..kinds import read_meta
from ..schema import Record, RecordSet
from .shards import INDEX

KEPT_IMAGE_TYPES = {".png": "png", ".jpg": "jpg", ".jpeg": "jpg", ".webp": "webp"}  # stored as they are


def write_shards(data: RecordSet, out: Path, shard_size: int = 10000, progress: bool = True) -> dict:
    """Every record with an image as tar shards under `out`, one shard set per split, then the
    index. Each shard and the index are written under a temporary name and renamed, so a killed
    conversion leaves no half-written shard. Returns the index."""
    if shard_size < 1:
        raise ValueError("shard size must be at least 1")
    out.mkdir(parents=True, exist_ok=True)
    records = [r for r in data.records if r.image]
    splits: dict[str, list[dict]] = {}
    with progress_bar(progress) as bar:
        task = bar.add_task("writing shards", total=len(records))
        for split in dict.fromkeys(r.split for r in records):
            in_split = [r for r in records if r.split == split]
            splits[split] = []
            for start in range(0, len(in_split), shard_size):
                name = f"{split}-{len(splits[split]):06d}.tar"
                count = _write_shard(data, in_split[start:start + shard_size], out / name, start)
                splits[split].append({"name": name, "samples": count})
                bar.advance(task, min(shard_size, len(in_split) - start))
    index = {"format": "webdataset", "version": 1, "kind": read_meta(data.root).get("kind", None),
             "splits": splits}
    write_json(out / INDEX, index)
    return index


def _write_shard(data: RecordSet, records: list[Record], path: Path, first_key: int) -> int:
    # A whole-second mtime: webdataset's default (a float) costs every member a PAX header, which
    # doubles the headers the reader parses.
    with atomic_path(path) as tmp, tmp.open("wb") as f, wds.TarWriter(f, encoder=False, mtime=int(time.time())) as sink:
        for i, rec in enumerate(records):
            ext, image = _image_bytes(data.path(rec.image))
            sink.write({"__key__": f"{first_key + i:09d}", ext: image,
                        "txt": (rec.text[0] if rec.text else "").encode(),
                        "json": json.dumps(rec.to_json()).encode()})
    return len(records)


def _image_bytes(path: Path) -> tuple[str, bytes]:
    """(extension, bytes): PNG/JPEG/WebP copied byte for byte, anything else re-encoded as PNG."""
    ext = KEPT_IMAGE_TYPES.get(path.suffix.lower())
    if ext:
        return ext, path.read_bytes()

    buf = io.BytesIO()
    load_image(path).save(buf, format="PNG")
    return "png", buf.getvalue()


