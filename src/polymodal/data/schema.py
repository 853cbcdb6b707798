"""The sample record that every loader produces, and the log of records that were skipped."""

from __future__ import annotations

import errno
import json
import os
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import DataError  # re-exported: the records and readers raise it

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
AUDIO_EXTENSIONS = {".wav", ".flac", ".mp3", ".ogg", ".oga", ".opus"}  # what libsndfile decodes


def printable_path(path: str | os.PathLike) -> str:
    """A file name fit for one line of output: as it is when it is plain, else as a Python string
    literal, so that bytes that are not UTF-8 (held as lone surrogates), newlines, control characters
    and leading or trailing spaces show as escapes instead of breaking the line or the encoder."""
    text = os.fsdecode(path)
    if text.isprintable() and text == text.strip():  # a lone surrogate is not printable
        return text
    return repr(text)


class UnreadableFileError(DataError):
    """One input file that cannot be used. `str()` is the line for the user; `path` (printable)
    and `reason` are kept apart for skip lists, which show them side by side."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path, self.reason = printable_path(path), reason
        super().__init__(f"{self.path}: {reason}")


def media_problem(path: str | os.PathLike) -> str | None:
    """Why a media file cannot be used, from its name and its status alone; None when it can.
    A name that is not UTF-8 cannot be written to a manifest, an index or a report, so it is refused."""
    try:
        os.fsdecode(path).encode("utf-8")
    except UnicodeEncodeError:
        return "file name is not valid UTF-8 (rename the file)"
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "file not found"
    except OSError as err:  # ELOOP: a symlink loop; EACCES: a folder on the way that cannot be searched
        return "a symlink loop" if err.errno == errno.ELOOP else f"cannot be read ({err.strerror})"
    return None if stat.S_ISREG(mode) else "not a regular file"


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
    def from_json(cls, obj: dict) -> Record:
        if not isinstance(obj, dict) or "id" not in obj:
            raise DataError("a record must be a JSON object with an 'id'")
        text = obj.get("text", [])
        if isinstance(text, str):
            text = [text]
        if not isinstance(text, list) or any(not isinstance(obj.get(k), (str, type(None))) for k in ("image", "audio")):
            raise DataError("'image' and 'audio' must be paths, 'text' a string or a list of strings")
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
        where = printable_path(where)  # a file name that is not UTF-8, or holds a newline, stays one line
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

    def split(self, *names: str) -> RecordSet:
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
        problems = [(root / getattr(rec, k), media_problem(root / getattr(rec, k)))
                    for k in ("image", "audio") if getattr(rec, k)]
        problems = [(path, why) for path, why in problems if why]
        if problems:
            skips.skip(str(problems[0][0]), problems[0][1])
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
