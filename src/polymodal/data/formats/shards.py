"""Finding WebDataset shards (for streaming) and reading them as records (for every other
command), without the webdataset library or torch: `polymodal --help` and `load_records` stay light.

A shard set is a directory of `{split}-{n:06d}.tar` shards and `shards.json`, the index (shard names
and sample counts per split, and the dataset kind), a brace pattern (`shards/{00000..00009}.tar`),
one `.tar`, or img2dataset's output directory (`*.tar` with `*_stats.json` and parquet beside them).
`read_shards` extracts each split once into a polymodal dataset directory under the cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import braceexpand

from ...utils import cache_dir, progress_bar, write_json
from ..kinds import META_FILE
from ..schema import DataError, Record, SkipLog
from .manifest import MANIFEST, read_manifest
from .tars import tar_samples

INDEX = "shards.json"
MAX_MEMBER_BYTES = 256 * 2**20  # a sample with a larger file is skipped unread
IMAGE_EXTENSIONS = ("png", "jpg", "jpeg", "webp")  # a sample's image member, the first found


@dataclass
class Shard:
    url: str  # a local path
    samples: int | None  # None: not known until read


@dataclass
class ShardSet:
    """The shards of one split, and what the index says about the dataset."""

    source: str
    shards: list[Shard]
    meta: dict  # {"kind": ...} where known

    @property
    def samples(self) -> int:
        return sum(s.samples or 0 for s in self.shards)


def is_shard_source(source: str | Path) -> bool:
    """Is `--data` a set of shards (index directory, directory of tars, brace pattern, .tar)?"""
    text = str(source)
    if ("{" in text and ".." in text) or text.endswith(".tar"):
        return True
    path = Path(text)
    if not path.is_dir() or (path / "manifest.jsonl").is_file():
        return False
    return (path / INDEX).is_file() or any(path.glob("*.tar"))


def find_shards(source: str | Path, split: str = "train") -> ShardSet:
    """The shards `source` names, with sample counts from the index, img2dataset's stats files,
    or a scan of the tar headers (no image is decoded)."""
    text = str(source)
    path = Path(text)
    if path.is_dir() and (path / INDEX).is_file():
        return _from_index(path, split)
    if path.is_dir():
        urls = sorted(str(p) for p in path.glob("*.tar"))
    else:
        urls = list(braceexpand.braceexpand(text))
    if not urls:
        raise DataError(f"{text}: no .tar shards here")
    missing = [u for u in urls if not Path(u).is_file()]
    if missing:
        raise DataError(f"{missing[0]}: no such shard ({len(missing)} of {len(urls)} missing)")
    return ShardSet(text, [Shard(u, _count_samples(Path(u))) for u in urls], {})


def _from_index(root: Path, split: str) -> ShardSet:
    try:
        index = json.loads((root / INDEX).read_text())
        entries = index["splits"].get(split, [])
        shards = [Shard(str(root / e["name"]), int(e["samples"])) for e in entries]
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise DataError(f"{root / INDEX}: not a shard index ({err})") from err
    if not shards:
        raise DataError(f"{root / INDEX}: no shards for split '{split}' (splits: {', '.join(index['splits'])})")
    return ShardSet(str(root), shards, {"kind": index.get("kind")})


def _count_samples(tar: Path) -> int | None:
    """img2dataset's `{shard}_stats.json` says how many samples it wrote; otherwise count the
    distinct keys in the tar's headers (None: the tar cannot be read; the stream will say why)."""
    stats = tar.with_name(f"{tar.stem}_stats.json")
    try:
        return int(json.loads(stats.read_text())["successes"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    failed: dict[str, str] = {}
    keys = sum(1 for _ in tar_samples(str(tar), failed.setdefault, MAX_MEMBER_BYTES, wanted=lambda name: False))
    return None if failed else keys


def read_shards(source: str | Path, skips: SkipLog, split: str | None = None) -> tuple[list[Record], Path]:
    """The records of shards (every split of an index, or the tars `source` names; `split` for the
    records whose JSON names none), read from a dataset directory they are extracted into once,
    under the cache, keyed by the shards' paths, sizes and times. Returns (records, that directory)."""
    sets = _shard_sets(source, split or "train")
    stamp = [(s.url, *_size_and_time(s.url)) for shards in sets.values() for s in shards.shards]
    root = cache_dir() / "shards" / hashlib.sha1(json.dumps(stamp).encode()).hexdigest()[:20]
    if not (root / MANIFEST).is_file():
        _extract(sets, root, skips)
    return read_manifest(root, skips), root


def _shard_sets(source: str | Path, default_split: str) -> dict[str, ShardSet]:
    path = Path(str(source))
    if path.is_dir() and (path / INDEX).is_file():
        try:
            names = list(json.loads((path / INDEX).read_text())["splits"])
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise DataError(f"{path / INDEX}: not a shard index ({err})") from err
        return {name: _from_index(path, name) for name in names}
    return {default_split: find_shards(source)}


def _size_and_time(url: str) -> tuple[int, int]:
    stat = Path(url).stat()
    return stat.st_size, stat.st_mtime_ns


def _extract(sets: dict[str, ShardSet], root: Path, skips: SkipLog) -> None:
    """Every sample's image to ROOT/images and its record to ROOT/manifest.jsonl, written under a
    temporary name and renamed, so an interrupted extraction is never read."""
    tmp = root.with_name(f"{root.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "images").mkdir(parents=True)
    counts = [s.samples for shards in sets.values() for s in shards.shards]
    total = None if None in counts else sum(counts)
    count, broken = 0, {}  # broken: {url: why} of the tars that could not be read to the end
    with (tmp / MANIFEST).open("w") as manifest, progress_bar(True) as bar:
        task = bar.add_task("extracting shards", total=total)
        for split, shards in sets.items():
            for shard in shards.shards:
                read = 0
                for key, files in tar_samples(shard.url, broken.setdefault, MAX_MEMBER_BYTES):
                    record = _record(key, files, split, tmp, count, f"{shard.url}:{key}", skips)
                    if record is not None:
                        manifest.write(json.dumps(record) + "\n")
                        count += 1
                    read += 1
                    bar.advance(task)
                if shard.url in broken:  # one line for the shard, not a second for its missing samples
                    skips.skip(shard.url, broken[shard.url])
                elif shard.samples and read < shard.samples:  # a tar cut at a member boundary ends quietly
                    skips.skip(shard.url, f"{read} of {shard.samples} samples read (a truncated shard?)")
    kind = next((s.meta.get("kind") for s in sets.values() if s.meta.get("kind")), None)
    write_json(tmp / META_FILE, {"kind": kind, "extracted_from": sorted({s.source for s in sets.values()})})
    try:
        tmp.rename(root)
    except OSError:  # another process extracted the same shards first
        shutil.rmtree(tmp, ignore_errors=True)


def _record(key: str, files: dict, split: str, root: Path, n: int, where: str, skips: SkipLog) -> dict | None:
    """One sample's record (its JSON, or the key and caption of a tar polymodal did not write),
    with its image written under ROOT/images; None, and a skip, for a sample that cannot be used."""
    if any(v is None for v in files.values()):
        skips.skip(where, f"a file over {MAX_MEMBER_BYTES // 2**20} MiB")
        return None
    ext = next((e for e in IMAGE_EXTENSIONS if e in files), None)
    if ext is None:
        skips.skip(where, "no image (png, jpg or webp)")
        return None
    try:
        record = json.loads(files["json"]) if "json" in files else {}
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        skips.skip(where, f"bad JSON ({err})")
        return None
    if not isinstance(record, dict):
        skips.skip(where, "the JSON is not an object")
        return None
    if "text" not in record:  # img2dataset: the caption in its JSON, else in the .txt
        record["text"] = sample_captions(files, record)
    image = f"images/{n:09d}.{ext}"
    (root / image).write_bytes(files[ext])
    return {"id": key, **record, "split": record.get("split") or split, "image": image}


def sample_captions(files: dict, meta: dict) -> list[str]:
    """A sample's captions: polymodal's JSON `text` (every caption), else img2dataset's `caption`,
    else the .txt member."""
    text = meta.get("text") or meta.get("caption")
    if text is None and files.get("txt") is not None:
        text = files["txt"].decode("utf-8", errors="replace")
    text = [text] if isinstance(text, str) else text if isinstance(text, list) else []
    return [t.strip() for t in text if isinstance(t, str) and t.strip()]
