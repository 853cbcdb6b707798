"""A media folder.

- One subfolder per class, as torchvision's ImageFolder: for zero-shot classification the class
  name (underscores read as spaces) is the label. Images and audio files both count (a folder of
  sound classes, as ESC-50's, is an audio classification set).
- Sidecar captions: `clip.wav` + `clip.txt` (or `photo.png` + `photo.txt`), one caption a line,
  makes a captioned record, in a class subfolder or at the top of the folder. At the top, audio
  files and captioned images are records; other files there (a README, a licence) are ignored.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..schema import AUDIO_EXTENSIONS, IMAGE_EXTENSIONS, DataError, Record, SkipLog, media_problem

SIDECAR = ".txt"


def read_folder(root: Path, skips: SkipLog, split: str = "test") -> list[Record]:
    root = Path(root)
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    records = _top_level_records(root, skips, split)
    if not classes and not records:
        raise DataError(f"{root}: no class subfolders (expected ROOT/<class name>/<image or audio files>) "
                        "and no audio or captioned files (clip.wav + clip.txt)")
    for label in classes:
        files = _files(root / label, skips)
        names = set(files)
        for file in files:
            kind = _media_kind(file)
            if kind is None:
                if not file.name.startswith(".") and not _is_sidecar(file, names):
                    skips.skip(str(file), "not an image or audio file")
                continue
            record = _media_record(file, root, kind, split, skips)
            if record is not None:
                record.labels = label.replace("_", " ")
                records.append(record)
    return records


def _top_level_records(root: Path, skips: SkipLog, split: str) -> list[Record]:
    """The audio files and the captioned images directly in `root`."""
    files = sorted(p for p in root.iterdir() if not p.name.startswith(".") and not p.is_dir())
    names = set(files)
    records = []
    for file in files:
        kind = _media_kind(file)
        if kind == "audio" or (kind == "image" and file.with_suffix(SIDECAR) in names):
            record = _media_record(file, root, kind, split, skips)
            records += [record] if record is not None else []
    return records


def _media_kind(file: Path) -> str | None:
    suffix = file.suffix.lower()
    return "image" if suffix in IMAGE_EXTENSIONS else "audio" if suffix in AUDIO_EXTENSIONS else None


def _is_sidecar(file: Path, names: set[Path]) -> bool:
    """A `.txt` beside a media file of the same stem is that file's captions, not a stray file."""
    if file.suffix.lower() != SIDECAR:
        return False
    return any(file.with_suffix(ext) in names for ext in (*IMAGE_EXTENSIONS, *AUDIO_EXTENSIONS))


def _media_record(file: Path, root: Path, kind: str, split: str, skips: SkipLog) -> Record | None:
    """The record of one media file, with the captions of its sidecar if it has one (None, with the
    sidecar named in `skips`, when that cannot be read)."""
    rel = str(file.relative_to(root))
    record = Record(id=rel, split=split, **{kind: rel})
    sidecar = file.with_suffix(SIDECAR)
    if not os.path.lexists(sidecar):
        return record
    problem = media_problem(sidecar)  # a FIFO or a symlink loop would block or fail the read
    try:
        text = None if problem else sidecar.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        problem = "not UTF-8 text" if isinstance(err, UnicodeDecodeError) else f"cannot be read ({err.strerror})"
    if problem:
        skips.skip(str(sidecar), f"caption file {problem}")
        return None
    # One caption a line; a sidecar with none is an empty caption, which `validate` names.
    record.text = [line.strip() for line in text.splitlines() if line.strip()] or [""]
    return record


def _files(folder: Path, skips: SkipLog) -> list[Path]:
    """Every file under `folder`, sorted; a subfolder that cannot be listed is skipped and named.
    Symlinked folders are not followed, so a symlink loop cannot make the walk endless."""

    def unreadable(err: OSError) -> None:
        skips.skip(err.filename or str(folder), f"folder cannot be listed ({err.strerror})")

    return sorted(Path(parent) / name for parent, _, files in os.walk(folder, onerror=unreadable) for name in files)
