"""polymodal's own format: a directory with `manifest.jsonl` and the media files beside it."""

from __future__ import annotations

import json
from pathlib import Path

from ..schema import DataError, Record, SkipLog

MANIFEST = "manifest.jsonl"


def read_manifest(root: Path, skips: SkipLog) -> list[Record]:
    path = Path(root) / MANIFEST
    if not path.is_file():
        raise DataError(f"{path}: no manifest.jsonl here (is this a polymodal dataset directory?)")
    records = []
    with path.open("rb") as f:  # bytes, so that one line that is not UTF-8 costs that line only
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                records.append(Record.from_json(json.loads(line.decode("utf-8"))))
            except UnicodeDecodeError:
                skips.skip(f"{path}:{line_no}", "bad record (not valid UTF-8)")
            except (json.JSONDecodeError, DataError) as err:
                skips.skip(f"{path}:{line_no}", f"bad record ({err})")
    return records
