"""What `index build SOURCE` reads: a folder of images and audio files (captions from sidecar `.txt`
files, as clip-retrieval does), a single file, or any dataset the loaders read (manifest, COCO,
CSV/TSV). Each item says its modality; which modalities a build keeps is the pipeline's choice."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..data.schema import AUDIO_EXTENSIONS, IMAGE_EXTENSIONS, DataError, media_problem, printable_path

MEDIA = ("image", "audio")  # the modalities an index holds files of


@dataclass(frozen=True)
class Item:
    path: str  # absolute (printable, when `error` says why the file cannot be used)
    caption: str | None = None
    error: str | None = None  # set by the source for a file it lists but cannot offer: skipped, named
    modality: str | None = "image"  # "image" or "audio": which tower embeds it (None: the source's own error)


def modality_of(path: str | Path) -> str | None:
    """"image" or "audio" from the file's extension; None for any other file."""
    suffix = Path(path).suffix.lower()
    return "image" if suffix in IMAGE_EXTENSIONS else "audio" if suffix in AUDIO_EXTENSIONS else None


def _is_dataset(source: Path) -> bool:
    if source.is_dir():  # a polymodal dataset, or WebDataset shards with their index
        return (source / "manifest.jsonl").is_file() or (source / "shards.json").is_file()
    return source.suffix.lower() in (".json", ".jsonl", ".csv", ".tsv", ".tar")


def iter_source(source: str | Path) -> Iterator[Item]:
    """Items in a stable order; a folder is walked lazily, so memory stays flat however large it is."""
    source = Path(source)
    if not source.exists():
        raise DataError(f"{source}: no such file or directory")
    if _is_dataset(source):
        from ..data.formats import load_records

        data = load_records(source)
        for where, reason in data.skips.skipped:
            yield Item(where, error=reason, modality=None)
        for rec in data.records:
            for modality in MEDIA:  # a spoken-caption record carries both: two items
                if getattr(rec, modality):
                    yield Item(str(data.path(getattr(rec, modality)).resolve()), rec.text[0] if rec.text else None,
                               modality=modality)
        return
    if source.is_file():
        yield _listed(source.resolve())
        return
    for found in _walk(source.resolve()):
        yield found if isinstance(found, Item) else _listed(found)


def count_source(source: str | Path) -> Counter | None:
    """How many items `iter_source` yields, by modality (None: folders it cannot list), for the
    progress bar and the choice of media; None when counting costs a load (a dataset)."""
    source = Path(source)
    if _is_dataset(source):
        return None
    if source.is_file():
        return Counter([modality_of(source) or "image"])
    return Counter(modality_of(found) if isinstance(found, Path) else None for found in _walk(source))


def _listed(file: Path) -> Item:
    """A file found in a folder, with its sidecar caption, or with the reason it cannot be used."""
    modality = modality_of(file) or "image"  # a single file of another kind is refused as an unreadable image
    problem = media_problem(file)
    if problem:
        return Item(printable_path(file), error=problem, modality=modality)
    return Item(str(file), _sidecar_caption(file), modality=modality)


def _sidecar_caption(file: Path) -> str | None:
    try:
        return file.with_suffix(".txt").read_text(errors="replace").strip() or None
    except OSError:  # none, or one that cannot be read: the file is indexed without a caption
        return None


def _walk(root: Path) -> Iterator[Path | Item]:
    """Image and audio files under root, sorted, hidden entries skipped; symlinked folders are not followed
    (no loops), and a folder that cannot be listed is an Item with its error."""
    try:
        with os.scandir(root) as listing:
            entries = sorted((e for e in listing if not e.name.startswith(".")), key=lambda e: e.name)
    except OSError as err:
        yield Item(printable_path(root), error=f"folder cannot be listed ({err.strerror or err.__class__.__name__})",
                   modality=None)
        return
    for entry in entries:
        if entry.is_dir(follow_symlinks=False):
            yield from _walk(Path(entry.path))
        elif modality_of(entry.name):
            yield Path(entry.path)
