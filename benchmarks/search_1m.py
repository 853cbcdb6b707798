"""Search at real scale: N distinct ShapesWorld images (default 1,000,000), each rendered and embedded
with a polymodal model trained here, searched with text queries (held-out captions) and image
queries (held-out images), each measured on its own against exact search.

Stages, each cached under --work (rerun the same command to resume):
  model/            a shapes-cnn-tiny model (embed_dim 512) trained for --train-seconds on 20k images
                    (its data set in shapes/; held-out captions and images from its test split)
  queries.npz       text queries (one held-out caption per test image), image queries (the test
                    images), and the training captions' vectors (for the query-aware indexes)
  base/NNNNNNNN.npz one chunk of base vectors + the pixel hashes that keep every image distinct;
                    each written whole under a temporary name, then renamed
For each index kind and search setting: recall@10 against exact search, the median single-query
latency and its speed-up over exact FAISS flat search (IndexFlatIP) at the same thread count,
memory per vector (the index file / N) and build time. Everything runs on --threads threads.

    .venv/bin/python benchmarks/search_1m.py --work runs/ann1m                 # 1M: see benchmarks/README.md
    .venv/bin/python benchmarks/search_1m.py --work runs/ann-quick --quick     # 20k, about a minute

Figures: benchmarks/results/scale_ann.json (--quick: WORK/scale_ann_quick.json).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import tempfile
import time
from pathlib import Path

import numpy as np

from polymodal.index.vectors import AUTO_EXACT_LIMIT, DEFAULT_NPROBE, BuildOptions, VectorIndex, ivf_flat, resolve_kind
from polymodal.utils import atomic_path, progress_bar, write_json

RESULTS = Path(__file__).parent / "results"
K = 10


# -- the data set ------------------------------------------------------------------------------------


def trained_model(work: Path, train_seconds: float, n_queries: int, n_train: int = 20_000):
    """A shapes-cnn-tiny model with 512-d embeddings trained on `n_train` ShapesWorld images (cached)."""
    import polymodal
    from polymodal.config import get_model_config
    from polymodal.data.synthetic.shapes import ShapesConfig, generate
    from polymodal.train.loop import TrainConfig, train

    data = work / "shapes"
    if not (work / "model").is_dir():
        generate(data, ShapesConfig(n_train=n_train, n_val=200, n_test=n_queries, n_unseen=0, seed=7), progress=False)
        preset = get_model_config("shapes-cnn-tiny")
        preset.embed_dim = 512
        (work / "model.json").write_text(json.dumps(preset.to_dict()))
        with atomic_path(work / "model") as tmp:
            train(TrainConfig(data=str(data), out=str(tmp), model=str(work / "model.json"), epochs=100,
                              time_budget=train_seconds, eval_images=0, progress=False))
    return polymodal.load(work / "model"), data


def query_vectors(work: Path, model, data: Path, n_queries: int) -> dict[str, np.ndarray]:
    """{"text": (Q, D) held-out captions, "image": (Q, D) held-out images, "train_text": (T, D)
    training captions}: cached in queries.npz."""
    cache = work / "queries.npz"
    if not cache.is_file():
        from polymodal.data import load_records

        records = load_records(data)
        test = records.split("test").records[:n_queries]
        train_caps = [r.text[0] for r in records.split("train").records]
        vectors = {"text": model.encode_text([r.text[0] for r in test]).numpy(),
                   "image": model.encode_image([records.path(r.image) for r in test]).numpy(),
                   "train_text": model.encode_text(train_caps).numpy()}
        with atomic_path(cache) as tmp, open(tmp, "wb") as f:
            np.savez(f, **vectors)
    with np.load(cache) as z:
        return {name: z[name] for name in z.files}


def pixel_hash(pixels: np.ndarray) -> int:
    return int.from_bytes(hashlib.blake2b(pixels.tobytes(), digest_size=8).digest(), "little", signed=True)


def render_chunk(index: int, size: int, seen: set[int]) -> tuple[np.ndarray, np.ndarray]:
    """`size` ShapesWorld images none of which is in `seen` (their pixel hashes; updated):
    ((size, 3, 64, 64) uint8, (size,) int64 hashes). Seeded by the chunk number, so a resumed run
    renders the same chunk again."""
    from polymodal.data.synthetic.shapes import COLOURS, SHAPES, UNSEEN_COMBOS, render, sample_scene

    rng = random.Random(f"search-1m/{index}")
    combos = [(c, s) for c in COLOURS for s in SHAPES if (c, s) not in UNSEEN_COMBOS]
    pixels, hashes = np.empty((size, 64, 64, 3), np.uint8), np.empty(size, np.int64)
    filled = 0
    while filled < size:
        image = np.asarray(render(sample_scene(rng, combos, None, 64)))
        h = pixel_hash(image)
        if h not in seen:  # the same scene drawn twice (one-object scenes repeat): draw another
            seen.add(h)
            pixels[filled], hashes[filled] = image, h
            filled += 1
    return pixels.transpose(0, 3, 1, 2), hashes  # (size, 3, 64, 64)


def base_vectors(work: Path, model, n: int, chunk: int, held_out: set[int]) -> tuple[np.ndarray, float | None]:
    """(N, D) embeddings of N distinct images, rendered and embedded chunk by chunk (one file each),
    and the render+embed rate (images/s) of the run that made them (None if unknown)."""
    import torch

    folder = work / "base"
    folder.mkdir(parents=True, exist_ok=True)
    seen, parts = set(held_out), []
    made, start = 0, time.perf_counter()
    with progress_bar() as bar:
        task = bar.add_task("render + embed", total=n)
        for c, lo in enumerate(range(0, n, chunk)):
            path = folder / f"{lo:09d}-{min(n, lo + chunk) - lo}.npz"
            if not path.is_file():
                pixels, hashes = render_chunk(c, min(n, lo + chunk) - lo, seen)
                vectors = model.encode_image(torch.from_numpy(pixels)).numpy()  # (chunk, D)
                with atomic_path(path) as tmp, open(tmp, "wb") as f:
                    np.savez(f, vectors=vectors, hashes=hashes)
                made += len(hashes)
            with np.load(path) as z:
                parts.append(z["vectors"])
                seen.update(z["hashes"].tolist())
            bar.advance(task, len(parts[-1]))
    rate_file = folder / "rate.json"  # the rate of the run that rendered the chunks, kept for reruns
    if made:
        write_json(rate_file, {"images_per_s": made / (time.perf_counter() - start), "images": made})
    rate = json.loads(rate_file.read_text())["images_per_s"] if rate_file.is_file() else None
    return np.concatenate(parts), rate


def held_out_hashes(data: Path, n_queries: int) -> set[int]:
    """Pixel hashes of the query images, so that no base image equals one."""
    from PIL import Image

    files = sorted((data / "images" / "test").iterdir())[:n_queries]
    return {pixel_hash(np.asarray(Image.open(f).convert("RGB"))) for f in files}


# -- measuring ---------------------------------------------------------------------------------------


def latencies(search, queries: np.ndarray) -> tuple[float, np.ndarray]:
    """Median single-query time (ms) of `search(q (1, D)) -> ids (1, k)`, and the (Q, k) ids."""
    times, found = [], []
    for q in queries:
        start = time.perf_counter()
        found.append(search(q[None])[0])
        times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times)), np.stack(found)


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / truth.shape[1] for f, t in zip(found, truth)]))


class Exact:
    """The baseline: FAISS IndexFlatIP, ground truth and single-query timing."""

    def __init__(self, x: np.ndarray, query_sets: dict[str, np.ndarray], timed: int):
        import faiss

        self.index = faiss.IndexFlatIP(x.shape[1])
        self.index.add(x)
        self.truth = {name: self.index.search(q, K)[1] for name, q in query_sets.items()}  # batched: BLAS
        self.timed = {name: q[:timed] for name, q in query_sets.items()}

    def ms(self, name: str) -> float:
        return latencies(lambda q: self.index.search(q, K)[1], self.timed[name])[0]


def index_size(index: VectorIndex, n: int) -> float:
    """Bytes a vector: the saved index files (FAISS file + ids) / N."""
    with tempfile.TemporaryDirectory() as tmp:
        index.save(Path(tmp) / "v.faiss")
        return sum(f.stat().st_size for f in Path(tmp).iterdir()) / n


def build(kind: str, x: np.ndarray, train_text: np.ndarray) -> VectorIndex:
    """An index kind of polymodal's, or `ivf+text`: the query-aware candidate, an IVF whose coarse
    quantiser is trained on the image vectors and the training captions' vectors together."""
    ids = np.arange(len(x))
    if kind == "ivf+text":
        return VectorIndex(ivf_flat(x, extra_training=train_text), ids, "ivf")
    return VectorIndex.build(x, ids, kind)


def measure_kind(kind: str, x: np.ndarray, query_sets: dict, train_text: np.ndarray, exact: Exact,
                 settings: list[dict]) -> list[dict]:
    start = time.perf_counter()
    index = build(kind, x, train_text)
    build_s = time.perf_counter() - start
    size = index_size(index, len(x))
    rows = []
    for name, queries in query_sets.items():
        before = exact.ms(name)  # exact timed before and after: the machine's load drifts
        part = []
        for params in settings:
            index.set_search_params(BuildOptions(**params))
            p50, found = latencies(lambda q: index.search(q, K)[1], queries)
            part.append({"queries": name, "kind": kind, "setting": ",".join(f"{k}={v}" for k, v in params.items()),
                         "recall": recall(found, exact.truth[name]), "p50_ms": p50, "bytes": size,
                         "build_s": build_s})
        exact_ms = (before + exact.ms(name)) / 2
        for row in part:
            row.update(speedup=exact_ms / row["p50_ms"], exact_ms=exact_ms)
            print_row(row)
        rows += part
    return rows


def print_row(r: dict) -> None:
    print(f"{r['queries']:<7}{r['kind']:<10}{r['setting']:<22}{r['recall']:>10.3f}{r['p50_ms']:>9.3f}"
          f"{r['speedup']:>9.1f}{r['bytes']:>11.0f}{r['build_s']:>9.0f}{r['exact_ms']:>10.1f}", flush=True)


# -- the run -----------------------------------------------------------------------------------------

SETTINGS = {"ivf": [{"nprobe": p} for p in (1, 2, 4, 8, 16, 32, 64)],
            "hnsw": [{"ef_search": e} for e in (32, 64, 128, 256, 512)],
            "ivfpq": [{"nprobe": p, "rerank": r} for p, r in ((16, 10), (32, 10), (32, 50))]}
SETTINGS["ivf+text"] = SETTINGS["ivf"]


def headline(rows: list[dict], n: int) -> dict:
    """The figures of the approximate kind `--kind auto` builds at N (or above the exact limit when N
    is below it: --quick), searched with its default settings."""
    kind, defaults = resolve_kind("auto", max(n, AUTO_EXACT_LIMIT + 1)), BuildOptions()
    knob = {"ivf": f"nprobe={DEFAULT_NPROBE['ivf']}", "hnsw": f"ef_search={defaults.ef_search}"}.get(kind)
    out: dict = {"auto_kind": kind, "auto_setting": knob}
    for name in ("text", "image"):
        row = next((r for r in rows if r["kind"] == kind and r["setting"] == knob and r["queries"] == name), None)
        if row:
            out.update({f"ann_{name}_recall10": row["recall"], f"ann_{name}_speedup": row["speedup"],
                        "bytes_per_vector": row["bytes"], "build_s": row["build_s"]})
    return out


def fastest_at(rows: list[dict], target: float = 0.95) -> dict:
    """Per kind and query set: the fastest setting with recall@10 >= target."""
    best: dict = {}
    for r in rows:
        if r["recall"] >= target and r["speedup"] > best.get(r["kind"], {}).get(r["queries"], {}).get("speedup", 0):
            best.setdefault(r["kind"], {})[r["queries"]] = r
    return best


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1_000_000, help="distinct base images")
    parser.add_argument("--work", default="runs/ann1m", help="cache of the model, the queries and the base chunks")
    parser.add_argument("--kinds", default="ivf,ivf+text,hnsw,ivfpq")
    parser.add_argument("--chunk", type=int, default=50_000, help="images a cached chunk file")
    parser.add_argument("--queries", type=int, default=1000, help="text queries and image queries (each)")
    parser.add_argument("--timed", type=int, default=50, help="queries timed with exact search (slow at 1M)")
    parser.add_argument("--train-seconds", type=float, default=180)
    parser.add_argument("--train-images", type=int, default=20_000, help="ShapesWorld images the model trains on")
    parser.add_argument("--threads", type=int, default=1, help="FAISS / BLAS / torch threads, exact and ANN alike")
    parser.add_argument("--quick", action="store_true", help="20k images, 200 queries, a 30 s model: a minute")
    args = parser.parse_args()
    if args.quick:
        args.n, args.queries, args.train_seconds, args.chunk = min(args.n, 20_000), 200, 30, 10_000
        args.train_images = 4000
    return args


def main() -> None:
    import faiss
    import torch

    args = parse_args()
    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    model, data = trained_model(work, args.train_seconds, args.queries, args.train_images)
    queries = query_vectors(work, model, data, args.queries)
    x, rate = base_vectors(work, model, args.n, args.chunk, held_out_hashes(data, args.queries))
    if rate:
        print(f"render + embed: {rate:,.0f} images/s on {args.threads} thread(s): 1M takes {1e6 / rate / 60:.0f} min")
    query_sets = {"text": queries["text"], "image": queries["image"]}
    exact = Exact(x, query_sets, args.timed)
    print(f"\n{len(x):,} distinct images x {x.shape[1]}, {args.queries} text + {args.queries} image queries, k={K}, "
          f"{args.threads} thread(s); exact = FAISS IndexFlatIP, timed before and after each index")
    print(f"{'queries':<7}{'index':<10}{'setting':<22}{'recall@10':>10}{'p50 ms':>9}{'x exact':>9}"
          f"{'bytes/vec':>11}{'build s':>9}{'exact ms':>10}")
    rows, out = [], (work / "scale_ann_quick.json") if args.quick else RESULTS / "scale_ann.json"
    for kind in args.kinds.split(","):
        rows += measure_kind(kind, x, query_sets, queries["train_text"], exact, SETTINGS[kind])
        figures = {"N": len(x), "threads": args.threads, "render_embed_per_s": rate, **headline(rows, len(x)),
                   "fastest_at_recall_0.95": fastest_at(rows), "rows": rows}
        write_json(out, figures)  # after each kind: a long run stopped early keeps what it measured
    print_summary(figures)


def print_summary(figures: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"fastest setting at recall@10 >= 0.95, N = {figures['N']:,}, {figures['threads']} thread(s)")
    for col in ("index", "queries", "setting", "recall@10", "x exact", "bytes/vec", "build s"):
        table.add_column(col, justify="left" if col in ("index", "queries", "setting") else "right", no_wrap=True)
    for kind, by_queries in figures["fastest_at_recall_0.95"].items():
        for name, r in by_queries.items():
            table.add_row(kind, name, r["setting"], f"{r['recall']:.3f}", f"{r['speedup']:.0f}", f"{r['bytes']:.0f}",
                          f"{r['build_s']:.0f}")
    console = Console(width=120)
    console.print(table)
    console.print({k: v for k, v in figures.items() if k not in ("rows", "fastest_at_recall_0.95")})

if __name__ == "__main__":
    main()
