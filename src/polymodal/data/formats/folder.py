"""An image folder with one subfolder per class, as torchvision's ImageFolder: for zero-shot
classification the class name (underscores read as spaces) is the label."""

from __future__ import annotations

import os
from pathlib import Path

from ..schema import IMAGE_EXTENSIONS, DataError, Record, SkipLog


def read_folder(root: Path, skips: SkipLog, split: str = "test") -> list[Record]:
    root = Path(root)
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise DataError(f"{root}: no class subfolders (expected ROOT/<class name>/<image files>)")
    records = []
    for label in classes:
        for file in _files(root / label, skips):
            if file.suffix.lower() not in IMAGE_EXTENSIONS:
                if not file.name.startswith("."):
                    skips.skip(str(file), "not an image file")
                continue
            rel = str(file.relative_to(root))
            records.append(Record(id=rel, split=split, image=rel, labels=label.replace("_", " ")))
    return records


def _files(folder: Path, skips: SkipLog) -> list[Path]:
    """Every file under `folder`, sorted; a subfolder that cannot be listed is skipped and named.
    Symlinked folders are not followed, so a symlink loop cannot make the walk endless."""

    def unreadable(err: OSError) -> None:
        skips.skip(err.filename or str(folder), f"folder cannot be listed ({err.strerror})")

    return sorted(Path(parent) / name for parent, _, files in os.walk(folder, onerror=unreadable) for name in files)
