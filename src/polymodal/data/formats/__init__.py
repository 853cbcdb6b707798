"""Loaders: every format becomes the same `RecordSet`."""

from __future__ import annotations

from pathlib import Path

from ..schema import DataError, RecordSet, SkipLog, validate
from .coco import read_coco
from .folder import read_folder
from .llava import looks_like_llava, read_llava
from .manifest import MANIFEST, read_manifest
from .shards import is_shard_source, read_shards
from .table import read_table

FORMATS = ("manifest", "coco", "llava", "csv", "folder", "webdataset")


def detect_format(source: Path) -> str:
    source = Path(source)
    if is_shard_source(source):
        return "webdataset"
    if source.is_dir():
        return "manifest" if (source / MANIFEST).is_file() else "folder"
    suffix = source.suffix.lower()
    if suffix == ".json":
        return "llava" if source.is_file() and looks_like_llava(source) else "coco"
    if suffix in (".csv", ".tsv"):
        return "csv"
    if suffix == ".jsonl" and source.name == MANIFEST:
        return "manifest"
    if not source.exists():
        raise DataError(f"{source}: no such file or directory")
    raise DataError(f"{source}: cannot tell the dataset format; pass --format ({', '.join(FORMATS)})")


def load_records(
    source: str | Path,
    format: str = "auto",
    strict: bool = False,
    images: str | Path | None = None,
    split: str | None = None,
    **options,
) -> RecordSet:
    """Read a dataset in any supported format, validate it, and return its records.

    `images` is the directory media paths are relative to (default: the manifest/folder itself,
    or the directory holding the COCO JSON / CSV file). Bad records are skipped and logged in
    `result.skips`; with `strict=True` the first one raises `DataError`.
    """
    source = Path(source)
    if source.name == MANIFEST:
        source = source.parent
    if not source.exists() and not is_shard_source(source):
        raise DataError(f"{source}: no such file or directory")
    fmt = detect_format(source) if format == "auto" else format
    if fmt not in FORMATS:
        raise DataError(f"unknown dataset format '{fmt}' (known: {', '.join(FORMATS)})")
    skips = SkipLog(strict=strict)
    default_split = {"split": split} if split else {}
    if fmt == "manifest":
        records, root = read_manifest(source, skips), source
    elif fmt == "folder":
        records, root = read_folder(source, skips, **default_split), source
    elif fmt == "coco":
        records, root = read_coco(source, skips, **default_split), source.parent
    elif fmt == "webdataset":
        records, root = read_shards(source, skips, split)
    elif fmt == "llava":
        records, root = read_llava(source, skips, **default_split), source.parent
    else:
        records, root = read_table(source, skips, **options, **default_split), source.parent
    root = Path(images) if images else root
    records = validate(records, root, skips)
    return RecordSet(root=root, records=records, skips=skips)
