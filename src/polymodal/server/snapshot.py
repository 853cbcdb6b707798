"""One loaded state of the index on disk, and the cheap check that says when the disk has moved on."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from ..index.store import Index

# Every change to an index touches one of these: the manifest (an index rebuilt in place),
# meta.sqlite or its write-ahead log (items added or removed: each batch commits there).
WATCHED = ("manifest.json", "meta.sqlite", "meta.sqlite-wal")


def disk_signature(root: Path) -> tuple:
    """(inode, mtime, size) of the watched files: a few stat() calls, cheap enough to run every second."""
    out = []
    for name in WATCHED:
        try:
            st = os.stat(root / name)
            out.append((st.st_ino, st.st_mtime_ns, st.st_size))
        except FileNotFoundError:
            out.append(None)
    return tuple(out)


@dataclass(frozen=True)
class IndexSnapshot:
    """An open index with its vectors loaded, and what the disk looked like when it was opened."""

    index: Index
    signature: tuple
    info: dict  # Index.info() at load time: /health reports it without touching SQLite
    generation: int  # 1 for the first load, +1 for each reload
    loaded_at: float

    @classmethod
    def load(cls, root: Path, model, generation: int) -> IndexSnapshot:
        signature = disk_signature(root)  # taken first: a change made while loading shows at the next check
        index = Index.open(root)
        try:
            index.check_model(model)
            index.vectors()  # load or build the vector index now, not on the first query
            info = index.info()
        except BaseException:
            index.close()
            raise
        return cls(index, signature, info, generation, time.time())
