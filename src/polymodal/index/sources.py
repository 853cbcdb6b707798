"""What `index build SOURCE` reads: a folder of images (captions from sidecar `.txt` files, as
clip-retrieval does), a single image, or any dataset the loaders read (manifest, COCO, CSV/TSV)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..data.schema import IMAGE_EXTENSIONS, DataError, media_problem, printable_path


@dataclass(frozen=True)
class Item:
    path: str  # absolute (printable, when `error` says why the file cannot be used)
    caption: str | None = None
    error: str | None = None  # set by the source for a file it lists but cannot offer: skipped, named


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
        for where, reason in data.skips.skipped:
            yield Item(where, error=reason)
        for rec in data.records:
            if rec.image:
                yield Item(str(data.path(rec.image).resolve()), rec.text[0] if rec.text else None)
        return
    if source.is_file():
        yield _listed(source.resolve())
        return
    for found in _walk(source.resolve()):
        yield found if isinstance(found, Item) else _listed(found)


def count_source(source: str | Path) -> int | None:
    """How many items `iter_source` yields (for the progress bar); None when counting costs a load."""
    source = Path(source)
    if _is_dataset(source):
        return None
    return 1 if source.is_file() else sum(1 for _ in _walk(source))


def _listed(file: Path) -> Item:
    """A file found in a folder, with its sidecar caption, or with the reason it cannot be used."""
    problem = media_problem(file)
    if problem:
        return Item(printable_path(file), error=problem)
    return Item(str(file), _sidecar_caption(file))


def _sidecar_caption(file: Path) -> str | None:
    try:
        return file.with_suffix(".txt").read_text(errors="replace").strip() or None
    except OSError:  # none, or one that cannot be read: the image is indexed without a caption
        return None


def _walk(root: Path) -> Iterator[Path | Item]:
    """Image files under root, sorted, hidden entries skipped; symlinked folders are not followed
    (no loops), and a folder that cannot be listed is an Item with its error."""
    try:
        with os.scandir(root) as listing:
            entries = sorted((e for e in listing if not e.name.startswith(".")), key=lambda e: e.name)
    except OSError as err:
        yield Item(printable_path(root), error=f"folder cannot be listed ({err.strerror or err.__class__.__name__})")
        return
    for entry in entries:
        if entry.is_dir(follow_symlinks=False):
            yield from _walk(Path(entry.path))
        elif Path(entry.name).suffix.lower() in IMAGE_EXTENSIONS:
            yield Path(entry.path)
