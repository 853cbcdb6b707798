"""CSV/TSV files with a media-path column and a caption column (clip-retrieval's convention): an
image column (`filepath`, `image`, ...), an audio column (`audio`, ...), or both. A single path
column whose files are sound files (`.wav`, `.flac`, ...) is read as audio."""

from __future__ import annotations

import csv
from pathlib import Path

from ..schema import AUDIO_EXTENSIONS, DataError, Record, SkipLog


def read_table(path: Path, skips: SkipLog, image_col: str = "filepath", caption_col: str = "title",
               split: str = "train", audio_col: str = "audio") -> list[Record]:
    path = Path(path)
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    try:  # bytes that are not UTF-8 survive as lone surrogates: the row is then skipped and named
        f = path.open(newline="", encoding="utf-8", errors="surrogateescape")
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    with f:
        reader = csv.DictReader(f, delimiter=delimiter)
        try:
            columns = _columns(reader.fieldnames or [], path, image_col, audio_col, caption_col)
            return _read_rows(reader, path, skips, columns, split)
        except csv.Error as err:  # the reader cannot go on past a malformed row
            raise DataError(f"{path}: not a readable table ({err})") from None


def _columns(columns: list[str], path: Path, image_col: str, audio_col: str, caption_col: str) -> dict:
    """The names of the image, audio and caption columns; a table needs a caption column and an
    image or audio column (either may be missing, not both)."""
    image = _find(columns, image_col, ("filepath", "image", "path", "file", "filename"))
    audio = _find(columns, audio_col, ("audio", "audio_path", "audio_file", "wav"))
    if image is None and audio is None:
        raise DataError(f"{path}: no column '{image_col}' or '{audio_col}' (columns: {', '.join(columns) or 'none'})")
    caption = _find(columns, caption_col, ("title", "caption", "text"))
    if caption is None:
        raise DataError(f"{path}: no column '{caption_col}' (columns: {', '.join(columns) or 'none'})")
    return {"image": image, "audio": audio, "caption": caption}


def _read_rows(reader: csv.DictReader, path: Path, skips: SkipLog, columns: dict, split: str) -> list[Record]:
    media_cols = [c for c in (columns["image"], columns["audio"]) if c]
    records = []
    for row_no, row in enumerate(reader, 2):  # row 1 is the header
        media = {kind: _cell(row, columns[kind]) for kind in ("image", "audio")}  # path or None
        if not any(media.values()):
            skips.skip(f"{path}:{row_no}", "empty " + " and ".join(f"'{c}'" for c in media_cols))
            continue
        if media["image"] and not columns["audio"] and Path(media["image"]).suffix.lower() in AUDIO_EXTENSIONS:
            media = {"image": None, "audio": media["image"]}  # one path column, holding sound files
        not_utf8 = [k for k, v in row.items() if k not in media_cols and isinstance(v, str) and not _is_utf8(v)]
        if not_utf8:  # (media paths are judged with their files, in `validate`)
            skips.skip(f"{path}:{row_no}", f"'{not_utf8[0]}' is not valid UTF-8")
            continue
        split_name = (row.get("split") or split).strip()
        records.append(Record(id=str(row.get("id") or row_no - 1), split=split_name, **media,
                              text=[row.get(columns["caption"]) or ""]))
    return records


def _cell(row: dict, column: str | None) -> str | None:
    return ((row.get(column) or "").strip() or None) if column else None


def _find(columns: list[str], wanted: str, fallbacks: tuple[str, ...]) -> str | None:
    for name in (wanted, *fallbacks):
        if name in columns:
            return name
    return None


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
