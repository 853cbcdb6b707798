"""CSV/TSV files with an image-path column and a caption column (clip-retrieval's convention)."""

from __future__ import annotations

import csv
from pathlib import Path

from ..schema import DataError, Record, SkipLog


def read_table(
    path: Path, skips: SkipLog, image_col: str = "filepath", caption_col: str = "title", split: str = "train"
) -> list[Record]:
    path = Path(path)
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    try:
        f = path.open(newline="")
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    with f:
        reader = csv.DictReader(f, delimiter=delimiter)
        columns = reader.fieldnames or []
        image_col = _pick(columns, image_col, ("filepath", "image", "path", "file", "filename"), path)
        caption_col = _pick(columns, caption_col, ("title", "caption", "text"), path)
        records = []
        for row_no, row in enumerate(reader, 2):  # row 1 is the header
            image = (row.get(image_col) or "").strip()
            if not image:
                skips.skip(f"{path}:{row_no}", f"empty '{image_col}'")
                continue
            split_name = (row.get("split") or split).strip()
            records.append(Record(id=str(row.get("id") or row_no - 1), split=split_name, image=image,
                                  text=[row.get(caption_col) or ""]))
    return records


def _pick(columns: list[str], wanted: str, fallbacks: tuple[str, ...], path: Path) -> str:
    for name in (wanted, *fallbacks):
        if name in columns:
            return name
    raise DataError(f"{path}: no column '{wanted}' (columns: {', '.join(columns) or 'none'})")
