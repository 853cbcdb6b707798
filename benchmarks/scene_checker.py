"""The exact scene checker's own targets (issue 13): agreement with the generator's ground truth.

    python benchmarks/scene_checker.py [--scenes 1000] [--seed 0]

Renders `--scenes` ShapesWorld scenes (1-3 objects, 64 px), and checks each clean and degraded
(Gaussian blur radius 0.7, then Gaussian noise of std 12 per channel: roughly what a small
diffusion model's samples look like). A scene agrees when the checker finds exactly its objects:
the same colour, shape and size, each centre within 3 px. Targets: >= 0.99 clean, >= 0.95
degraded. Writes `checker_agreement` and `checker_agreement_degraded` into
benchmarks/results/generation.json (keeping the file's other keys).
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter
from rich.console import Console
from rich.table import Table

from polymodal.data.synthetic.shapes import COLOURS, SHAPES, render, sample_scene
from polymodal.evaluate.scene_checker import agrees, detect
from polymodal.utils import write_json

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "generation.json"


def degrade(image: Image.Image, rng: np.random.Generator) -> np.ndarray:
    pixels = np.asarray(image.filter(ImageFilter.GaussianBlur(0.7))).astype(np.float32)
    return np.clip(pixels + rng.normal(0, 12, pixels.shape), 0, 255).astype(np.uint8)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenes", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng, noise = random.Random(args.seed), np.random.default_rng(args.seed)
    combos = [(c, s) for c in COLOURS for s in SHAPES]
    clean = degraded = 0
    start = time.perf_counter()
    for _ in range(args.scenes):
        objects = sample_scene(rng, combos, None, 64)
        truth, image = [vars(o) for o in objects], render(objects, 64)
        clean += agrees(detect(image), truth)
        degraded += agrees(detect(degrade(image, noise)), truth)
    figures = {"checker_agreement": clean / args.scenes, "checker_agreement_degraded": degraded / args.scenes,
               "checker_scenes": args.scenes, "checker_seconds": round(time.perf_counter() - start, 1)}
    table = Table(title=f"Scene checker against the generator ({args.scenes} scenes)")
    for column in ("figure", "target", "measured"):
        table.add_column(column)
    table.add_row("agreement, clean", ">= 0.99", f"{figures['checker_agreement']:.3f}")
    table.add_row("agreement, blur 0.7 + noise 12", ">= 0.95", f"{figures['checker_agreement_degraded']:.3f}")
    Console().print(table)
    results = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    write_json(RESULTS, {**results, **figures})


if __name__ == "__main__":
    main()
