"""Exact and compressed search at 100k and 1M normalised 512-d vectors, beside plain NumPy in the
same run: single-query p50/p99 latency, queries/s for batches of 100, recall@10 against exact.

    .venv/bin/python benchmarks/search_exact.py                      # 100k and 1M
    .venv/bin/python benchmarks/search_exact.py --sizes 100000 --queries 200

NumPy baseline: `x @ q` then `argpartition` (single query); `Q @ x.T`, then `argpartition` per row
(batch). "faiss flat" is FAISS's own IndexFlatIP search, for reference.

Its figures are written to benchmarks/results/search_exact.json (committed).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from polymodal.index.vectors import VectorIndex
from polymodal.utils import write_json


def unit_rows(rng, n: int, d: int) -> np.ndarray:
    x = np.empty((n, d), np.float32)
    for i in range(0, n, 100_000):  # in chunks: no float64 temporaries of 4 GB
        block = rng.standard_normal((min(100_000, n - i), d), dtype=np.float32)
        x[i:i + len(block)] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return x


def numpy_single(x, q, k):
    scores = x @ q
    top = np.argpartition(-scores, k)[:k]
    return top[np.argsort(-scores[top])]


def numpy_batch(x, queries, k):
    scores = queries @ x.T  # (B, N): one matrix product
    top = np.argpartition(-scores, k, axis=1)[:, :k]
    return np.take_along_axis(top, np.argsort(-np.take_along_axis(scores, top, 1), axis=1), 1)


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth)]))


def run(n: int, d: int, n_queries: int, batch_reps: int, k: int = 10) -> list[dict]:
    """Every method answers each query in turn (interleaved), so load from other jobs on this
    shared machine falls on all of them alike."""
    rng = np.random.default_rng(0)
    x = unit_rows(rng, n, d)
    queries = unit_rows(rng, n_queries, d)
    batch = unit_rows(rng, 100, d)
    truth = np.stack([numpy_single(x, q, k) for q in queries])
    methods = {"numpy": (lambda q: numpy_single(x, q, k), lambda b: numpy_batch(x, b, k))}
    build = {}
    ids = np.arange(n, dtype=np.int64)
    for kind in ("flat", "fp16", "sq8"):
        start = time.perf_counter()
        index = VectorIndex.build(x, ids, kind)
        build[f"polymodal {kind}"] = time.perf_counter() - start
        methods[f"polymodal {kind}"] = (lambda q, i=index: i.search(q[None], k)[1][0],
                                        lambda b, i=index: i.search(b, k))
        if kind == "flat":
            import faiss

            raw = faiss.IndexFlatIP(d)
            raw.add(x)
            methods["faiss flat"] = (lambda q, r=raw: r.search(q[None], k)[1][0], lambda b, r=raw: r.search(b, k))
    lat = {name: [] for name in methods}
    found = {name: [] for name in methods}
    names = list(methods)
    for i, q in enumerate(queries):
        for name in names[i % len(names):] + names[:i % len(names)]:  # rotate who goes first
            single = methods[name][0]
            start = time.perf_counter()
            found[name].append(single(q))
            lat[name].append((time.perf_counter() - start) * 1000)
    batch_s = {name: [] for name in methods}
    for _ in range(batch_reps):
        for name, (_, batch_fn) in methods.items():
            start = time.perf_counter()
            batch_fn(batch)
            batch_s[name].append(time.perf_counter() - start)
    warm = 3  # the first queries warm caches and thread pools
    return [{"method": name, "p50": np.percentile(lat[name][warm:], 50), "p99": np.percentile(lat[name][warm:], 99),
             "batch_qps": 100 / np.median(batch_s[name]), "recall": recall(np.stack(found[name]), truth),
             "build_s": build.get(name)} for name in methods]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="100000,1000000", help="comma-separated collection sizes")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=100, help="single queries timed per method")
    parser.add_argument("--batch-reps", type=int, default=5, help="batches of 100 timed per method")
    args = parser.parse_args()
    print("machine shared with other jobs; medians of one run, side by side")
    figures = {}
    for n in (int(s) for s in args.sizes.split(",")):
        rows = run(n, args.dim, args.queries, args.batch_reps)
        figures[str(n)] = rows
        base = rows[0]
        print(f"\n{n:,} x {args.dim} float32 unit vectors, k=10")
        print(f"{'method':<18}{'p50 ms':>9}{'p99 ms':>9}{'x numpy':>9}{'batch q/s':>11}{'x numpy':>9}{'recall@10':>11}"
              f"{'build s':>9}")
        for r in rows:
            build = f"{r['build_s']:.1f}" if r["build_s"] is not None else "-"
            print(f"{r['method']:<18}{r['p50']:>9.2f}{r['p99']:>9.2f}{base['p50'] / r['p50']:>9.2f}"
                  f"{r['batch_qps']:>11.0f}{r['batch_qps'] / base['batch_qps']:>9.2f}{r['recall']:>11.3f}{build:>9}")
    write_json(Path(__file__).parent / "results" / "search_exact.json", {"dim": args.dim, "sizes": figures})


if __name__ == "__main__":
    main()
