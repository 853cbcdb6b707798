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
    try:  # bytes that are not UTF-8 survive as lone surrogates: the row is then skipped and named
        f = path.open(newline="", encoding="utf-8", errors="surrogateescape")
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    with f:
        try:
            return _read_rows(csv.DictReader(f, delimiter=delimiter), path, skips, image_col, caption_col, split)
        except csv.Error as err:  # the reader cannot go on past a malformed row
            raise DataError(f"{path}: not a readable table ({err})") from None


def _read_rows(reader: csv.DictReader, path: Path, skips: SkipLog, image_col: str, caption_col: str,
               split: str) -> list[Record]:
    columns = reader.fieldnames or []
    image_col = _pick(columns, image_col, ("filepath", "image", "path", "file", "filename"), path)
    caption_col = _pick(columns, caption_col, ("title", "caption", "text"), path)
    records = []
    for row_no, row in enumerate(reader, 2):  # row 1 is the header
        image = (row.get(image_col) or "").strip()
        if not image:
            skips.skip(f"{path}:{row_no}", f"empty '{image_col}'")
            continue
        not_utf8 = [k for k, v in row.items() if k != image_col and isinstance(v, str) and not _is_utf8(v)]
        if not_utf8:  # (the image path is judged with its file, in `validate`)
            skips.skip(f"{path}:{row_no}", f"'{not_utf8[0]}' is not valid UTF-8")
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


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
