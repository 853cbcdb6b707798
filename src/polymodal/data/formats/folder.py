"""An image folder with one subfolder per class, as torchvision's ImageFolder: for zero-shot
classification the class name (underscores read as spaces) is the label."""

from __future__ import annotations

from pathlib import Path

from ..schema import IMAGE_EXTENSIONS, DataError, Record, SkipLog


def read_folder(root: Path, skips: SkipLog, split: str = "test") -> list[Record]:
    root = Path(root)
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise DataError(f"{root}: no class subfolders (expected ROOT/<class name>/<image files>)")
    records = []
    for label in classes:
        for file in sorted((root / label).rglob("*")):
            if file.suffix.lower() not in IMAGE_EXTENSIONS:
                if file.is_file() and not file.name.startswith("."):
                    skips.skip(str(file), "not an image file")
                continue
            rel = str(file.relative_to(root))
            records.append(Record(id=rel, split=split, image=rel, labels=label.replace("_", " ")))
    return records
