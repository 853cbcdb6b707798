"""Approximate search (HNSW, IVF-PQ) against exact search, on two data sets of 512-d unit vectors:

- real: image embeddings of ShapesWorld from a quickly trained polymodal model (embed_dim 512),
  each base image with perturbed copies to reach the size; queries are text embeddings of test
  captions (text -> image search, the everyday use);
- uniform: random unit vectors, the known worst case for every ANN method.

For each index: build time, memory per vector (the index file / N), recall@10 against exact, and
the single-query speed-up over polymodal's exact search (timed just before and after each index's
queries, as the load of this shared machine drifts).

    .venv/bin/python benchmarks/search_ann.py --sizes 1000000              # about 30+ min on 2 cores
    .venv/bin/python benchmarks/search_ann.py --sizes 100000 --kinds ivfpq

Its figures are written to benchmarks/results/search_ann.json (committed).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from polymodal.index.vectors import BuildOptions, VectorIndex
from polymodal.utils import write_json


def real_embeddings(work: Path, n_base: int, train_seconds: float, dim: int, n_queries: int):
    """(base (n_base, dim), {"text": (Q, dim), "image": (Q, dim)}) from a model trained here for a
    minute; cached in `work` (delete it to retrain)."""
    cache = work / f"embeddings-{n_base}-{train_seconds:g}-{dim}-{n_queries}.npz"
    if cache.is_file():
        with np.load(cache) as z:
            return z["base"], {"text": z["text"], "image": z["image"]}
    import polymodal
    from polymodal.config import get_model_config
    from polymodal.data import load_records
    from polymodal.data.synthetic.shapes import ShapesConfig, generate
    from polymodal.train.loop import TrainConfig, train

    data = work / "shapes"
    generate(data, ShapesConfig(n_train=n_base, n_val=200, n_test=n_queries, n_unseen=0, seed=7), progress=False)
    config = work / "model.json"
    preset = get_model_config("shapes-cnn-tiny")
    preset.embed_dim = dim
    config.write_text(json.dumps(preset.to_dict()))
    train(TrainConfig(data=str(data), out=str(work / "model"), model=str(config), epochs=100,
                      time_budget=train_seconds, eval_images=0, progress=False))
    model = polymodal.load(work / "model")
    records = load_records(data)
    base = model.encode_image([records.path(r.image) for r in records.split("train")]).numpy()
    test = records.split("test").records[:n_queries]
    queries = {"text": model.encode_text([r.text[0] for r in test]).numpy(),  # text -> image search
               "image": model.encode_image([records.path(r.image) for r in test]).numpy()}  # unseen images
    np.savez(cache, base=base, **queries)
    return base, queries


def perturbed_copies(base: np.ndarray, n: int, noise: float, rng) -> np.ndarray:
    """n unit vectors: base rows plus Gaussian noise (relative size `noise`), renormalised."""
    out = np.empty((n, base.shape[1]), np.float32)
    for i in range(0, n, 100_000):
        rows = base[np.arange(i, min(i + 100_000, n)) % len(base)]
        rows = rows + noise / np.sqrt(base.shape[1]) * rng.standard_normal(rows.shape, dtype=np.float32)
        out[i:i + len(rows)] = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    return out


def unit(rng, n: int, d: int) -> np.ndarray:
    x = rng.standard_normal((n, d), dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def print_row(r: dict) -> None:
    print(f"{r['queries']:<8}{r['kind']:<7}{r['setting']:<20}{r['recall']:>10.3f}{r['p50_ms']:>9.2f}"
          f"{r['speedup']:>9.1f}{r['bytes']:>11.0f}{r['build_s']:>9.0f}{r['exact_ms']:>10.1f}", flush=True)


def exact_latency(exact: VectorIndex, queries: np.ndarray, k: int) -> float:
    """Median single-query time of exact search (ms)."""
    times = []
    for q in queries:
        start = time.perf_counter()
        exact.search(q[None], k)
        times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times))


def evaluate(x: np.ndarray, query_sets: dict, kinds: list[str], settings: dict, k: int = 10) -> list[dict]:
    ids = np.arange(len(x), dtype=np.int64)
    exact = VectorIndex.build(x, ids, "flat")
    truths = {qname: exact.search(queries, k)[1] for qname, queries in query_sets.items()}
    rows = []
    for kind in kinds:
        start = time.perf_counter()
        index = VectorIndex.build(x, ids, kind)
        build_s = time.perf_counter() - start
        with tempfile.TemporaryDirectory() as tmp:
            index.save(Path(tmp) / "v.faiss")
            size = (Path(tmp) / "v.faiss").stat().st_size + 8 * len(x)
        for qname, queries in query_sets.items():
            # Exact timed before and after the ANN settings (the machine's load drifts); median of both.
            before = exact_latency(exact, queries, k)
            kind_rows = []
            for params in settings[kind]:
                index.set_search_params(BuildOptions(**params))
                lat, found = [], []
                for q in queries:
                    start = time.perf_counter()
                    found.append(index.search(q[None], k)[1][0])
                    lat.append(time.perf_counter() - start)
                recall = np.mean([len(set(f) & set(t)) / k for f, t in zip(found, truths[qname])])
                kind_rows.append({"queries": qname, "kind": kind, "recall": recall, "p50_ms": 1000 * np.median(lat),
                                  "setting": ",".join(f"{name}={value}" for name, value in params.items()),
                                  "bytes": size / len(x), "build_s": build_s})
            exact_ms = (before + exact_latency(exact, queries, k)) / 2
            for row in kind_rows:
                row["speedup"], row["exact_ms"] = exact_ms / row["p50_ms"], exact_ms
                print_row(row)
            rows += kind_rows
        del index
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000000")
    parser.add_argument("--kinds", default="ivfpq,hnsw")
    parser.add_argument("--data", default="real,uniform")
    parser.add_argument("--base", type=int, default=20000, help="distinct ShapesWorld images (real data)")
    parser.add_argument("--noise", type=float, default=0.2, help="relative size of the perturbation of copies")
    parser.add_argument("--work", default="/tmp/polymodal-bench-ann", help="cache of the trained embeddings")
    parser.add_argument("--train-seconds", type=float, default=60)
    parser.add_argument("--queries", type=int, default=100)
    args = parser.parse_args()
    settings = {"hnsw": [{"ef_search": e} for e in (32, 64, 128, 256)],
                "ivfpq": [{"nprobe": p, "rerank": r} for p, r in ((16, 10), (16, 50), (32, 50), (64, 100))]}
    kinds = args.kinds.split(",")
    rng = np.random.default_rng(0)
    print("machine shared with other jobs; exact timed before and after each index's queries")
    figures: dict = {}
    real = None
    if "real" in args.data:
        start = time.perf_counter()
        Path(args.work).mkdir(parents=True, exist_ok=True)
        real = real_embeddings(Path(args.work), args.base, args.train_seconds, 512, args.queries)
        print(f"real embeddings: {args.base} ShapesWorld images, model trained {args.train_seconds:.0f}s "
              f"({time.perf_counter() - start:.0f}s with data and encoding, or from the cache)")
    for n in (int(s) for s in args.sizes.split(",")):
        for data in args.data.split(","):
            if data == "real":
                x, query_sets = perturbed_copies(real[0], n, args.noise, rng), real[1]
            else:
                x, query_sets = unit(rng, n, 512), {"random": unit(rng, args.queries, 512)}
            print(f"\n{data}: {n:,} x 512, k=10")
            print(f"{'queries':<8}{'index':<7}{'setting':<20}{'recall@10':>10}{'p50 ms':>9}{'x exact':>9}"
                  f"{'bytes/vec':>11}{'build s':>9}{'exact ms':>10}")
            figures.setdefault(str(n), {})[data] = evaluate(x, query_sets, kinds, settings)
            del x
    write_json(Path(__file__).parent / "results" / "search_ann.json", {"sizes": figures})


if __name__ == "__main__":
    main()
