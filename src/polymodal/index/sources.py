"""What `index build SOURCE` reads: a folder of images (captions from sidecar `.txt` files, as
clip-retrieval does), a single image, or any dataset the loaders read (manifest, COCO, CSV/TSV)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from ..data.schema import IMAGE_EXTENSIONS, DataError


@dataclass(frozen=True)
class Item:
    path: str  # absolute
    caption: str | None = None


def _is_dataset(source: Path) -> bool:
    if source.is_dir():
        return (source / "manifest.jsonl").is_file()
    return source.suffix.lower() in (".json", ".jsonl", ".csv", ".tsv")


def iter_source(source: str | Path) -> Iterator[Item]:
    """Items in a stable order; a folder is walked lazily, so memory stays flat however large it is."""
    source = Path(source)
    if not source.exists():
        raise DataError(f"{source}: no such file or directory")
    if _is_dataset(source):
        from ..data.formats import load_records

        data = load_records(source)
        for rec in data.records:
            if rec.image:
                yield Item(str(data.path(rec.image).resolve()), rec.text[0] if rec.text else None)
        return
    if source.is_file():
        yield Item(str(source.resolve()), None)
        return
    for file in _walk(source.resolve()):
        sidecar = file.with_suffix(".txt")
        caption = sidecar.read_text(errors="replace").strip() or None if sidecar.is_file() else None
        yield Item(str(file), caption)


def count_source(source: str | Path) -> int | None:
    """How many items `iter_source` yields (for the progress bar); None when counting costs a load."""
    source = Path(source)
    if _is_dataset(source):
        return None
    return 1 if source.is_file() else sum(1 for _ in _walk(source))


def _walk(root: Path) -> Iterator[Path]:
    """Image files under root, sorted, hidden entries skipped."""
    with os.scandir(root) as entries:
        entries = sorted((e for e in entries if not e.name.startswith(".")), key=lambda e: e.name)
    for entry in entries:
        if entry.is_dir(follow_symlinks=False):
            yield from _walk(Path(entry.path))
        elif Path(entry.name).suffix.lower() in IMAGE_EXTENSIONS:
            yield Path(entry.path)
