"""The persistent index: a directory that survives crashes at any moment.

    INDEX/manifest.json   what made it: model spec, model_id, embedding dim, index kind
    INDEX/meta.sqlite     items (id, path, caption, modality, content hash, shard), skipped files (WAL mode)
    INDEX/shards/*.npz    embeddings, written whole under a temporary name and renamed
    INDEX/vectors.faiss   the searchable FAISS index (+ .ids.npy), rebuilt from the shards when stale

A shard is written first, then its rows are committed to SQLite in one transaction; a shard that no
committed row names (a crash between the two) is deleted by the next writer. So SQLite says exactly
what is in the index, and a rerun of `build` picks up every file it does not name.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import IndexFormatError
from ..utils import atomic_path, write_json
from .vectors import BuildOptions, VectorIndex, resolve_kind

FORMAT = "polymodal-index"
VERSION = 1

SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    id INTEGER PRIMARY KEY, path TEXT UNIQUE NOT NULL, caption TEXT, modality TEXT NOT NULL,
    hash TEXT NOT NULL, shard TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS items_hash ON items(hash);
CREATE INDEX IF NOT EXISTS items_shard ON items(shard);
CREATE TABLE IF NOT EXISTS skipped (path TEXT PRIMARY KEY, reason TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


@dataclass
class Hit:
    id: int
    score: float
    path: str
    caption: str | None
    modality: str

    def to_json(self) -> dict:
        return {"id": self.id, "score": round(self.score, 6), "path": self.path, "caption": self.caption,
                "modality": self.modality}


class ModelMismatchError(ValueError):
    """A query or an addition from a model other than the one that built the index."""


class Index:
    """Open with `Index.open(path)`; `Index.create(path, model_spec, model_id, dim)` for a new one.

    `search(model, text=..., image=..., audio=..., k=10)` and `search_vectors(queries, k)` query it;
    `add(...)` (through `polymodal.index.build_index`) and `remove(paths)` change it in place.
    """

    def __init__(self, root: Path, manifest: dict):
        self.root = Path(root)
        self.manifest = manifest
        self.db = sqlite3.connect(self.root / "meta.sqlite", check_same_thread=False, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: a committed batch survives a process kill
        self.db.executescript(SCHEMA)
        self.shard_dir.mkdir(exist_ok=True)
        self._vectors: VectorIndex | None = None

    # -- create / open -----------------------------------------------------------------------------

    @classmethod
    def create(cls, root: str | Path, model: str, model_id: str, dim: int, kind: str = "auto") -> Index:
        root = Path(root)
        resolve_kind(kind, 0)  # validates the name
        if (root / "manifest.json").exists():
            raise IndexFormatError(f"{root}: an index already exists here")
        if root.exists() and any(root.iterdir()):
            raise IndexFormatError(f"{root}: directory is not empty and holds no index")
        root.mkdir(parents=True, exist_ok=True)
        manifest = {"format": FORMAT, "version": VERSION, "model": model, "model_id": model_id, "dim": int(dim),
                    "kind": kind}
        index = cls(root, manifest)
        write_json(root / "manifest.json", manifest)
        return index

    @classmethod
    def open(cls, root: str | Path) -> Index:
        root = Path(root)
        path = root / "manifest.json"
        if not path.is_file():
            raise IndexFormatError(f"{root}: not a polymodal index (no manifest.json)")
        try:
            manifest = json.loads(path.read_text())
            if manifest.get("format") != FORMAT:
                raise ValueError("not a polymodal index manifest")
            int(manifest["dim"]), str(manifest["model_id"])
        except (ValueError, KeyError, TypeError) as err:
            raise IndexFormatError(f"{path}: unreadable index manifest ({err})") from None
        return cls(root, manifest)

    def close(self) -> None:
        self.db.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- what it holds -----------------------------------------------------------------------------

    @property
    def shard_dir(self) -> Path:
        return self.root / "shards"

    @property
    def dim(self) -> int:
        return int(self.manifest["dim"])

    @property
    def model_id(self) -> str:
        return self.manifest["model_id"]

    def __len__(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM items").fetchone()[0]

    def check_model(self, model) -> None:
        """Refuse a model other than the one that built the index."""
        model_id, dim = getattr(model, "model_id", None), int(model.embed_dim)
        if model_id != self.model_id or dim != self.dim:
            raise ModelMismatchError(f"{self.root}: index was built with {self.model_id} (dim {self.dim}); "
                                     f"got {model_id} (dim {dim})")

    def known_paths(self, paths: Sequence[str]) -> set[str]:
        return {r[0] for r in self._query_in("SELECT path FROM items WHERE path IN ({})", paths)}

    def known_hashes(self, hashes: Sequence[str]) -> dict[str, str]:
        rows = self._query_in("SELECT hash, path FROM items WHERE hash IN ({})", hashes)
        return dict(rows)

    def items(self, ids: Iterable[int]) -> dict[int, tuple]:
        rows = self._query_in("SELECT id, path, caption, modality FROM items WHERE id IN ({})", list(ids))
        return {r[0]: r[1:] for r in rows}

    def item_by_id(self, item_id: int) -> tuple | None:
        return self.db.execute("SELECT path, caption, modality FROM items WHERE id = ?", (item_id,)).fetchone()

    def skipped(self, limit: int | None = None) -> list[tuple[str, str]]:
        sql = "SELECT path, reason FROM skipped ORDER BY path" + (f" LIMIT {int(limit)}" if limit else "")
        return self.db.execute(sql).fetchall()

    def skipped_count(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM skipped").fetchone()[0]

    def info(self) -> dict:
        kinds = dict(self.db.execute("SELECT modality, COUNT(*) FROM items GROUP BY modality").fetchall())
        return {"path": str(self.root), "model": self.manifest["model"], "model_id": self.model_id, "dim": self.dim,
                "kind": resolve_kind(self.manifest["kind"], len(self)), "items": len(self), "by_modality": kinds,
                "skipped": self.skipped_count(), "shards": len(list(self.shard_dir.glob("*.npz")))}

    # -- writing -----------------------------------------------------------------------------------

    def write_batch(self, vectors: np.ndarray, paths: Sequence[str], captions: Sequence[str | None],
                    hashes: Sequence[str], modality: str | Sequence[str] = "image") -> None:
        """Append one batch: the shard file first, then its rows in one transaction. `modality`:
        one for the whole batch, or one per item (an index may hold images and audio side by side)."""
        modalities = [modality] * len(paths) if isinstance(modality, str) else list(modality)
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise ModelMismatchError(f"{self.root}: vectors of shape {vectors.shape} do not fit dim {self.dim}")
        if not len(paths):
            return
        first = self._counter("next_id")
        ids = np.arange(first, first + len(paths), dtype=np.int64)
        shard = f"{first:012d}.npz"
        with atomic_path(self.shard_dir / shard) as tmp, open(tmp, "wb") as f:
            np.savez(f, ids=ids, vectors=vectors)
        with self.db:  # one transaction: rows, counter and skip-list clean-up together
            self.db.execute("BEGIN")
            self.db.executemany("INSERT INTO items (id, path, caption, modality, hash, shard) VALUES (?,?,?,?,?,?)",
                                [(int(i), p, c, m, h, shard)
                                 for i, p, c, h, m in zip(ids, paths, captions, hashes, modalities)])
            self.db.execute("INSERT OR REPLACE INTO counters VALUES ('next_id', ?)", (first + len(paths),))
            self.db.executemany("DELETE FROM skipped WHERE path = ?", [(p,) for p in paths])
        self._vectors = None

    def record_skips(self, skips: Sequence[tuple[str, str]]) -> None:
        if skips:
            with self.db:
                self.db.execute("BEGIN")
                self.db.executemany("INSERT OR REPLACE INTO skipped VALUES (?, ?)", list(skips))

    def remove(self, paths: Sequence[str]) -> int:
        """Remove items by path (as stored: absolute); returns how many were removed."""
        with self.db:
            self.db.execute("BEGIN")
            before = len(self)
            self.db.executemany("DELETE FROM items WHERE path = ?", [(str(p),) for p in paths])
            removed = before - len(self)
        self.drop_orphan_shards()
        self._vectors = None
        return removed

    # -- searching ---------------------------------------------------------------------------------

    def vectors(self, options: BuildOptions | None = None) -> VectorIndex:
        """The FAISS index, rebuilt from the shards when it does not match SQLite (new or removed items)."""
        if self._vectors is not None:
            return self._vectors
        path = self.root / "vectors.faiss"
        state = self._state()
        stamp = self.root / "vectors.json"
        if path.is_file() and stamp.is_file() and json.loads(stamp.read_text()) == state:
            self._vectors = VectorIndex.load(path, state["kind"])
        else:
            ids, vectors = self.load_vectors()
            self._vectors = VectorIndex.build(vectors, ids, state["kind"], options)
            self._vectors.save(path)
            write_json(stamp, state)
        return self._vectors

    def load_vectors(self) -> tuple[np.ndarray, np.ndarray]:
        """All live (ids (N,), vectors (N, D)) from the shards, in id order."""
        live = set(r[0] for r in self.db.execute("SELECT DISTINCT shard FROM items"))
        ids, vecs = [np.zeros(0, np.int64)], [np.zeros((0, self.dim), np.float32)]
        removed_any = self._counter("next_id") != len(self)
        for shard in sorted(live):
            with np.load(self.shard_dir / shard) as z:
                ids.append(z["ids"])
                vecs.append(z["vectors"])
        ids_all, vecs_all = np.concatenate(ids), np.concatenate(vecs)
        if removed_any:  # drop the rows of removed items
            keep = np.isin(ids_all, np.array([r[0] for r in self.db.execute("SELECT id FROM items")], np.int64))
            ids_all, vecs_all = ids_all[keep], vecs_all[keep]
        return ids_all, vecs_all

    def search_vectors(self, queries: np.ndarray, k: int = 10) -> list[list[Hit]]:
        """queries: (B, D) unit vectors -> B lists of hits, best first."""
        queries = np.atleast_2d(np.asarray(queries, dtype=np.float32))
        if queries.shape[1] != self.dim:
            raise ModelMismatchError(f"{self.root}: query of dim {queries.shape[1]}, index dim {self.dim}")
        vectors = self.vectors()
        if len(vectors) == 0:
            return [[] for _ in queries]
        scores, ids = vectors.search(queries, k)
        meta = self.items(int(i) for i in ids.ravel() if i >= 0)
        return [[Hit(int(i), float(s), *meta[int(i)]) for s, i in zip(srow, irow) if int(i) in meta]
                for srow, irow in zip(scores, ids)]

    def search(self, model, text: str | None = None, image=None, audio=None, k: int = 10) -> list[Hit]:
        """Text, an image (path or PIL image) or an audio clip (path or (N,) 16 kHz waveform) -> the
        k nearest items, whatever their modality, with `model` (checked against the index)."""
        self.check_model(model)
        if sum(q is not None for q in (text, image, audio)) != 1:
            raise ValueError("give one query: a text, an image or an audio clip")
        if text is not None:
            query = model.encode_text([text])
        elif image is not None:
            query = model.encode_image([image])
        else:
            query = model.encode_audio([audio])
        return self.search_vectors(query.cpu().numpy(), k)[0]

    # -- internals ---------------------------------------------------------------------------------

    def _state(self) -> dict:
        count = len(self)
        return {"items": count, "next_id": self._counter("next_id"), "kind": resolve_kind(self.manifest["kind"], count)}

    def _counter(self, name: str) -> int:
        row = self.db.execute("SELECT value FROM counters WHERE name = ?", (name,)).fetchone()
        return row[0] if row else 0

    def drop_orphan_shards(self) -> None:
        """Delete shards that no committed row names (left by a killed writer). Only a writer calls
        this: a reader must not race a concurrent build."""
        live = set(r[0] for r in self.db.execute("SELECT DISTINCT shard FROM items"))
        for file in self.shard_dir.glob("*.npz"):
            if file.name not in live:
                file.unlink()
        for tmp in self.shard_dir.glob(".*.tmp-*"):  # a shard being written when the process died
            tmp.unlink()

    def _query_in(self, sql: str, values: Sequence) -> list[tuple]:
        out, values = [], list(values)
        for i in range(0, len(values), 900):  # SQLite's bound-parameter limit
            chunk = values[i:i + 900]
            out += self.db.execute(sql.format(",".join("?" * len(chunk))), chunk).fetchall()
        return out
