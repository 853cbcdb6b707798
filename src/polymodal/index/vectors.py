"""The searchable vector structures, all FAISS indexes over inner product (= cosine on unit vectors).

kinds:
- `flat`: exact. Queries are scored with BLAS matrix products over the vectors, chunk by chunk
  (FAISS's own flat search was slower than plain NumPy on this CPU, for single queries and batches
  alike: see benchmarks/search_exact.py).
- `fp16`: a compressed scan (float16 codes: half the memory), split across threads.
- `sq8`: a faster compressed scan (8-bit scalar quantisation) for 10 * k candidates, re-ranked
  exactly with float32 copies (FAISS's "SQ8,RFlat"): for speed, not memory.
- `hnsw`: a graph (HNSWFlat), for large collections.
- `ivf`: inverted lists of the float32 vectors under a spherical k-means coarse quantiser (cosine
  centroids): exact scores inside the probed lists, so recall depends only on the lists probed. At
  1M real ShapesWorld embeddings it held recall@10 0.9995 for text and image queries alike at 200x+
  exact search on one thread (benchmarks/search_1m.py), and built in 98 s where HNSW took 412 s.
- `ivfpq`: inverted lists of product-quantised codes, re-ranked with float16 copies, for very large ones.

Row i of the FAISS index holds the item whose id is `ids[i]`; both are saved side by side.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..utils import atomic_path

KINDS = ("auto", "flat", "sq8", "fp16", "hnsw", "ivf", "ivfpq")
# `auto`, as measured on real embeddings (benchmarks/search_1m.py): exact up to 100k vectors (a few ms
# a query); above, `ivf` (recall@10 0.9995 at 200x+ exact at 1M, for text and image queries alike;
# 98 s to build on one core: HNSW answers 2-3x faster at equal recall but took 412 s, and the store
# rebuilds its FAISS index after every add or remove); past 10M, `ivfpq` (float32 lists would not fit
# in memory). Whether text-query vectors are at hand does not change the choice: an IVF quantiser
# trained on image and caption vectors together served text queries worse at few probes (recall@10
# 0.49 against 0.71 with one list, 0.94 against 0.98 with four, at 1M) and the same from 16 on: its
# caption centroids hold few images (the "ivf+text" rows of benchmarks/results/scale_ann.json).
AUTO_EXACT_LIMIT = 100_000
AUTO_IVF_LIMIT = 10_000_000
# ivf: 16 of 2 sqrt(N) lists held recall@10 0.9995 for text and image queries at 1M, at 200x+ exact.
DEFAULT_NPROBE = {"ivf": 16, "ivfpq": 32}


def resolve_kind(kind: str, count: int) -> str:
    if kind not in KINDS:
        raise ValueError(f"unknown index kind '{kind}' (one of {', '.join(KINDS)})")
    if kind != "auto":
        return kind
    return "flat" if count <= AUTO_EXACT_LIMIT else "ivf" if count <= AUTO_IVF_LIMIT else "ivfpq"


def _faiss():
    try:
        import faiss
    except ImportError:
        raise RuntimeError("the search engine needs FAISS: pip install 'polymodal[search]'") from None
    return faiss


@dataclass
class BuildOptions:
    hnsw_m: int = 32  # graph degree: memory grows with it, and so does recall
    ef_construction: int = 80
    ef_search: int = 128
    nlist: int | None = None  # IVF lists (default: about 4 * sqrt(N))
    nprobe: int | None = None  # IVF lists probed (default: DEFAULT_NPROBE of the kind)
    pq_m: int | None = None  # PQ bytes a vector (default: dim / 8)
    rerank: int = 10  # ivfpq, sq8: re-rank rerank * k candidates (float16 / float32 copies of the vectors)


class VectorIndex:
    """A FAISS index plus the item id of each row. The exact kind keeps its vectors in a NumPy
    array instead (`matrix`): BLAS streams NumPy's huge-page-backed memory about 15 % faster than
    the same rows inside FAISS (measured), and the files are FAISS files either way."""

    def __init__(self, index, ids: np.ndarray, kind: str, matrix: np.ndarray | None = None):
        self.index, self.ids, self.kind, self.matrix = index, ids.astype(np.int64), kind, matrix

    @property
    def dim(self) -> int:
        return self.matrix.shape[1] if self.matrix is not None else self.index.d

    def __len__(self) -> int:
        return len(self.matrix) if self.matrix is not None else int(self.index.ntotal)

    # -- build, save, load -------------------------------------------------------------------------

    @classmethod
    def build(cls, vectors: np.ndarray, ids: np.ndarray, kind: str = "auto", options: BuildOptions | None = None):
        """vectors: (N, D) float32 unit rows; ids: (N,) int64."""
        opts = options or BuildOptions()
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        kind = resolve_kind(kind, len(vectors))
        if kind == "flat":
            return cls(None, ids, kind, matrix=vectors.copy())
        index = ivf_flat(vectors, opts.nlist) if kind == "ivf" else _faiss_index(kind, vectors, opts)
        out = cls(index, ids, kind)
        out.set_search_params(opts)
        return out

    def set_search_params(self, opts: BuildOptions) -> None:
        faiss = _faiss()
        if self.kind == "hnsw":
            self.index.hnsw.efSearch = opts.ef_search
        elif self.kind in ("ivf", "ivfpq"):
            faiss.extract_index_ivf(self.index).nprobe = opts.nprobe or DEFAULT_NPROBE[self.kind]
        if self.kind in ("ivfpq", "sq8"):
            self.index.k_factor = opts.rerank

    def save(self, path: Path) -> None:
        faiss = _faiss()
        with atomic_path(path.with_suffix(".ids.npy")) as tmp, open(tmp, "wb") as f:
            np.save(f, self.ids)
        index = self.index
        if index is None:  # flat: a FAISS IndexFlatIP file, made for the write
            index = faiss.IndexFlatIP(self.dim)
            index.add(self.matrix)
        with atomic_path(path) as tmp:
            faiss.write_index(index, str(tmp))

    @classmethod
    def load(cls, path: Path, kind: str):
        faiss = _faiss()
        index = faiss.read_index(str(path))
        ids = np.load(path.with_suffix(".ids.npy"))
        if kind == "flat":
            rows = faiss.rev_swig_ptr(index.get_xb(), index.ntotal * index.d).reshape(index.ntotal, index.d)
            return cls(None, ids, kind, matrix=np.array(rows))
        out = cls(index, ids, kind)
        out.set_search_params(BuildOptions())
        return out

    # -- search ------------------------------------------------------------------------------------

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """queries: (B, D) -> (scores (B, k'), ids (B, k')), best first; k' = min(k, N)."""
        queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        k = min(k, len(self))
        if k <= 0:
            return np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64)
        if self.kind == "flat":
            scores, rows = self._blas_search(queries, k)
        elif self.kind == "fp16" and len(queries) == 1:
            scores, rows = self._threaded_scan(self.index, queries, k)
        elif self.kind == "sq8" and len(queries) == 1:
            candidates = self._threaded_scan(self.index.base_index, queries, int(self.index.k_factor * k))[1]
            scores, rows = self._rerank(queries, candidates, k)
        else:
            scores, rows = self.index.search(queries, k)
        return scores, np.where(rows >= 0, self.ids[np.clip(rows, 0, None)], -1)

    def _blas_search(self, queries: np.ndarray, k: int):
        """Exact top-k with BLAS over row chunks of about 4M scores (one chunk for a single query up
        to 4M rows), merging as it goes: a (100, 1M) score matrix would not fit in cache."""
        chunk = max(4096, (1 << 22) // len(queries))
        best_scores = np.zeros((len(queries), 0), np.float32)
        best_rows = np.zeros((len(queries), 0), np.int64)
        for start in range(0, len(self), chunk):
            rows = self.matrix[start:start + chunk]  # (chunk, D)
            # One query: a matrix-vector product (BLAS gemv beats a 1-row gemm here).
            scores = (rows @ queries[0])[None] if len(queries) == 1 else queries @ rows.T  # (B, chunk)
            top_scores, top_rows = _top_k(scores, min(k, scores.shape[1]))
            best_scores = np.concatenate([best_scores, top_scores], axis=1)
            best_rows = np.concatenate([best_rows, top_rows + start], axis=1)
            if best_scores.shape[1] > k:
                keep_scores, keep = _top_k(best_scores, k)
                best_scores, best_rows = keep_scores, np.take_along_axis(best_rows, keep, 1)
        return best_scores, best_rows

    def _rerank(self, queries: np.ndarray, candidates: np.ndarray, k: int):
        """Exact scores of (1, C) candidate rows from the float32 copies of the refine index."""
        faiss = _faiss()
        flat = faiss.downcast_index(self.index.refine_index)
        rows = faiss.rev_swig_ptr(flat.get_xb(), len(self) * self.dim).reshape(len(self), self.dim)
        cand = candidates[0][candidates[0] >= 0]
        scores = rows[cand] @ queries[0]  # (C,)
        best = np.argsort(-scores)[:k]
        return scores[best][None], cand[best][None]

    def _threaded_scan(self, index, queries: np.ndarray, k: int):
        """FAISS scans one query on one thread; split the rows across threads (it releases the GIL)."""
        from concurrent.futures import ThreadPoolExecutor

        threads = min(os.cpu_count() or 1, 8)
        n = len(self)
        bounds = np.linspace(0, n, threads + 1).astype(int)
        faiss = _faiss()

        def part(i):
            sel = faiss.SearchParameters(sel=faiss.IDSelectorRange(int(bounds[i]), int(bounds[i + 1])))
            return index.search(queries, k, params=sel)

        with ThreadPoolExecutor(threads) as pool:
            parts = list(pool.map(part, range(threads)))
        scores = np.concatenate([p[0] for p in parts], axis=1)
        rows = np.concatenate([p[1] for p in parts], axis=1)
        best = np.argsort(-scores, axis=1)[:, :k]
        return np.take_along_axis(scores, best, 1), np.take_along_axis(rows, best, 1)


def _faiss_index(kind: str, vectors: np.ndarray, opts: BuildOptions):
    """A trained and filled FAISS index of kind fp16, sq8, hnsw or ivfpq."""
    faiss = _faiss()
    n, d = vectors.shape
    ip = faiss.METRIC_INNER_PRODUCT
    if kind == "fp16":
        index = faiss.IndexScalarQuantizer(d, faiss.ScalarQuantizer.QT_fp16, ip)
    elif kind == "sq8":
        index = faiss.index_factory(d, "SQ8,RFlat", ip)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, opts.hnsw_m, ip)
        index.hnsw.efConstruction = opts.ef_construction
    else:  # ivfpq, re-ranked with float16 vectors ("np": no polysemous training, minutes saved)
        nlist = opts.nlist or max(1, min(int(4 * np.sqrt(n)), n // 39))
        pq_m = opts.pq_m or max(1, d // 8)
        index = faiss.index_factory(d, f"IVF{nlist},PQ{pq_m}x8np,Refine(SQfp16)", ip)
    if not index.is_trained:
        sample = vectors[np.random.default_rng(0).permutation(n)[: 256 * 256]] if n > 256 * 256 else vectors
        index.train(sample)
    index.add(vectors)
    return index


def default_nlist(n: int) -> int:
    """IVF lists for N vectors: 2 sqrt(N) (2,000 at 1M), with >= 39 vectors a list to train on."""
    return max(1, min(int(2 * np.sqrt(n)), n // 39))


def ivf_flat(vectors: np.ndarray, nlist: int | None = None, extra_training: np.ndarray | None = None):
    """An IndexIVFFlat over inner product whose coarse quantiser is spherical k-means (unit
    centroids, the right ones for cosine) on a sample of 40 vectors a list, 10 iterations: the
    centroids barely move after that, and k-means is most of the build time. `extra_training`
    (e.g. text-query vectors) joins the k-means sample, which places lists where queries fall: the
    query-aware candidate of benchmarks/search_1m.py, measured worse for text queries at few probes."""
    faiss = _faiss()
    n, d = vectors.shape
    nlist = nlist or default_nlist(n)
    sample = vectors[np.random.default_rng(0).permutation(n)[: 40 * nlist]]
    if extra_training is not None:
        sample = np.concatenate([sample, np.asarray(extra_training, np.float32)])
    kmeans = faiss.Kmeans(d, nlist, niter=10, spherical=True, seed=1, max_points_per_centroid=1 << 30)
    kmeans.train(sample)
    quantizer = faiss.IndexFlatIP(d)
    quantizer.add(kmeans.centroids)
    index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
    index.own_fields = True  # the index frees its quantiser (and keeps it alive past this function)
    quantizer.this.disown()
    index.add(vectors)  # the quantiser is trained, so the index is too (IVF-Flat has nothing else to train)
    return index


def _top_k(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(B, N) scores -> the k best of each row, sorted. argpartition on the scores as they are
    (the k largest land at the end): no negated copy of a large score matrix."""
    n = scores.shape[1]
    part = np.argpartition(scores, n - k, axis=1)[:, n - k:] if k < n else np.tile(np.arange(n), (len(scores), 1))
    top = np.take_along_axis(scores, part, 1)
    order = np.argsort(-top, axis=1)
    return np.take_along_axis(top, order, 1), np.take_along_axis(part, order, 1)
