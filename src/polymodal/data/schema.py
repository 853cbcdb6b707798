"""The sample record that every loader produces, and the log of records that were skipped."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

from ..errors import DataError  # re-exported: the records and readers raise it

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


def printable_path(path: str | os.PathLike) -> str:
    """A file name fit for one line of output: as it is when it is plain, else as a Python string
    literal, so that bytes that are not UTF-8 (held as lone surrogates), newlines, control characters
    and leading or trailing spaces show as escapes instead of breaking the line or the encoder."""
    text = os.fsdecode(path)
    if text.isprintable() and text == text.strip():  # a lone surrogate is not printable
        return text
    return repr(text)


@dataclass
class Record:
    """One sample. Media fields are paths relative to the dataset root."""

    id: str
    split: str = "train"
    image: str | None = None
    audio: str | None = None
    text: list[str] = field(default_factory=list)
    attributes: dict[str, Any] = field(default_factory=dict)
    labels: Any = None

    def to_json(self) -> dict:
        out: dict[str, Any] = {"id": self.id, "split": self.split}
        for key in ("image", "audio"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        if self.text:
            out["text"] = self.text
        if self.attributes:
            out["attributes"] = self.attributes
        if self.labels is not None:
            out["labels"] = self.labels
        return out

    @classmethod
    def from_json(cls, obj: dict) -> "Record":
        if not isinstance(obj, dict) or "id" not in obj:
            raise DataError("a record must be a JSON object with an 'id'")
        text = obj.get("text", [])
        if isinstance(text, str):
            text = [text]
        return cls(
            id=str(obj["id"]),
            split=obj.get("split", "train"),
            image=obj.get("image"),
            audio=obj.get("audio"),
            text=list(text),
            attributes=obj.get("attributes", {}) or {},
            labels=obj.get("labels"),
        )


@dataclass
class SkipLog:
    """Records that were skipped, with the reason; `strict` turns the first one into an error."""

    strict: bool = False
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def skip(self, where: str, reason: str) -> None:
        if self.strict:
            raise DataError(f"{where}: {reason}")
        self.skipped.append((where, reason))

    def __len__(self) -> int:
        return len(self.skipped)

    def summary(self, limit: int = 10) -> str:
        if not self.skipped:
            return "no records skipped"
        lines = [f"skipped {len(self.skipped)} bad record(s):"]
        lines += [f"  {where}: {reason}" for where, reason in self.skipped[:limit]]
        if len(self.skipped) > limit:
            lines.append(f"  ... and {len(self.skipped) - limit} more")
        return "\n".join(lines)


@dataclass
class RecordSet:
    """Records plus the directory their media paths are relative to."""

    root: Path
    records: list[Record]
    skips: SkipLog = field(default_factory=SkipLog)

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[Record]:
        return iter(self.records)

    def split(self, *names: str) -> "RecordSet":
        return RecordSet(self.root, [r for r in self.records if r.split in names], self.skips)

    @property
    def splits(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for r in self.records:
            counts[r.split] = counts.get(r.split, 0) + 1
        return counts

    def path(self, relative: str) -> Path:
        return self.root / relative


def validate(records: Iterable[Record], root: Path, skips: SkipLog, need_text: bool = False) -> list[Record]:
    """Drop records whose media file is missing or whose captions are empty; log each."""
    kept = []
    for rec in records:
        missing = [k for k in ("image", "audio") if getattr(rec, k) and not (root / getattr(rec, k)).is_file()]
        if missing:
            skips.skip(str(root / getattr(rec, missing[0])), "file not found")
            continue
        captions = [t.strip() for t in rec.text if isinstance(t, str) and t.strip()]
        if not captions and (rec.text or need_text):
            skips.skip(f"record {rec.id}", "empty caption")
            continue
        rec.text = captions
        kept.append(rec)
    return kept


def write_manifest(path: Path, records: Iterable[Record]) -> int:
    """Write `manifest.jsonl` atomically (temporary name, then rename)."""
    from ..utils import atomic_path

    n = 0
    with atomic_path(path) as tmp, tmp.open("w") as f:
        for rec in records:
            f.write(json.dumps(rec.to_json()) + "\n")
            n += 1
    return n
