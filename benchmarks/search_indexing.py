"""Indexing a folder of JPEG files: items/s end to end (`polymodal index build`: list, read, hash,
decode, encode, write shards and SQLite) against the encoder alone on pre-decoded tensors, and the
peak memory (max RSS) of the build at several collection sizes.

    .venv/bin/python benchmarks/search_indexing.py                     # 4,000 and 16,000 files
    .venv/bin/python benchmarks/search_indexing.py --sizes 2000,8000 --model shapes-cnn-small

Each measurement runs in its own process (peak RSS is per process); encoder and pipeline runs
alternate, and the medians are reported.

Its figures are written to benchmarks/results/search_indexing.json (committed).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from polymodal.utils import write_json


def make_jpeg_folder(out: Path, n: int, base: Path) -> Path:
    """n distinct JPEG files: ShapesWorld PNGs re-encoded at several qualities (distinct bytes)."""
    from PIL import Image

    out.mkdir(parents=True)
    sources = sorted(base.glob("*.png"))
    for i in range(n):
        src = sources[i % len(sources)]
        with Image.open(src) as img:
            img.convert("RGB").save(out / f"{i:07d}.jpg", quality=95 - (i // len(sources)) % 20)
    return out


def child(mode: str, folder: str, model_dir: str, out: str, batch_size: int) -> None:
    """Run one measurement in this process; print seconds, items and peak RSS as JSON."""
    import torch

    import polymodal
    from polymodal.index import BuildConfig, build_index

    model = polymodal.load(model_dir)
    if mode == "encoder":
        files = sorted(Path(folder).glob("*.jpg"))
        images = model.preprocess(files)  # decoded up front: not timed
        model.encode_image(images[:batch_size])  # warm-up
        start = time.perf_counter()
        for i in range(0, len(images), batch_size):
            model.encode_image(images[i:i + batch_size], batch_size=batch_size)
        seconds, items = time.perf_counter() - start, len(images)
    else:
        model.encode_image(torch.zeros(batch_size, 3, 64, 64, dtype=torch.uint8))  # the same warm-up
        start = time.perf_counter()
        report = build_index(BuildConfig(source=folder, out=out, model=model_dir, batch_size=batch_size,
                                         progress=False), model=model)
        seconds, items = time.perf_counter() - start, report.added
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": seconds, "items": items, "peak_mb": peak_mb}))


def measure(mode: str, folder: Path, model_dir: Path, work: Path, batch_size: int, rep: int) -> dict:
    out = work / f"index-{folder.name}-{rep}"
    proc = subprocess.run([sys.executable, __file__, "--child", mode, str(folder), str(model_dir), str(out),
                           str(batch_size)], capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="4000,16000")
    parser.add_argument("--model", default="shapes-cnn-small", help="preset (random weights: speed only)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        mode, folder, model_dir, out, batch = args.child
        return child(mode, folder, model_dir, out, int(batch))

    import polymodal
    from polymodal.data.synthetic.shapes import ShapesConfig, generate
    from polymodal.models.checkpoint import save_checkpoint

    print("machine shared with other jobs; encoder and pipeline runs alternate, medians reported")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        generate(work / "shapes", ShapesConfig(n_train=2000, n_val=0, n_test=0, n_unseen=0, seed=5), progress=False)
        model_dir = save_checkpoint(polymodal.create_model(args.model, texts=["a red circle"]), work / "model")
        print(f"\n{'files':>7}{'encoder items/s':>17}{'pipeline items/s':>18}{'ratio':>7}{'pipeline peak MB':>18}")
        figures = {}
        for n in (int(s) for s in args.sizes.split(",")):
            folder = make_jpeg_folder(work / f"jpeg-{n}", n, work / "shapes" / "images" / "train")
            runs = {"encoder": [], "pipeline": []}
            for rep in range(args.reps):
                for mode in runs:
                    runs[mode].append(measure(mode, folder, model_dir, work, args.batch_size, rep))
            enc = np.median([r["items"] / r["seconds"] for r in runs["encoder"]])
            pipe = np.median([r["items"] / r["seconds"] for r in runs["pipeline"]])
            peak = np.median([r["peak_mb"] for r in runs["pipeline"]])
            assert all(r["items"] == n for r in runs["pipeline"]), runs["pipeline"]
            print(f"{n:>7}{enc:>17.0f}{pipe:>18.0f}{pipe / enc:>7.2f}{peak:>18.0f}", flush=True)
            figures[str(n)] = {"encoder_items_per_s": enc, "pipeline_items_per_s": pipe, "ratio": pipe / enc,
                               "pipeline_peak_mb": peak}
    write_json(Path(__file__).parent / "results" / "search_indexing.json", {"model": args.model, "sizes": figures})


if __name__ == "__main__":
    main()
