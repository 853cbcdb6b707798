"""Text-to-image on ShapesWorld, scored GenEval-style by the exact checker (issue 13).

    python benchmarks/generation.py --model runs/t2i/model --data runs/t2i/data \
        [--aligned runs/composition_long3/long_polymodal_model] [--per-category 50] [--solver-prompts 96] \
        [--guidance 3] [--design NAME]

The model is a `polymodal train-generator` pipeline trained on DATA's train split, e.g.

    polymodal data shapes runs/t2i/data --n 20000 --val 0 --captions 3 --prompt-captions 5
    polymodal train-generator runs/t2i/data --out runs/t2i/model --steps 100000 --time-budget 45m --lr 8e-4

Prompts come from the test split's scenes (six categories, `--per-category` each) and, for the
unseen set, from test_unseen (prompts naming a colour-shape pair training never showed). Each prompt
gets one image (DPM-Solver++, 20 steps, guidance `--guidance`, seed = its index). In the same run:
- the unconditional model: the same network sampled with the empty prompt (the branch caption
  dropout trained), scored against the prompts;
- shuffled text: each image drawn from another prompt of the set, scored against its own;
- DDPM at 1,000 steps against DPM-Solver++ at 20 on `--solver-prompts` prompts (0: skipped), the
  same seeds (solver20_gap = DDPM score - DPM-Solver++ score);
- with `--aligned`: Fréchet distance to real test images in that model's image space, CLIP-score
  and R-precision.
Writes the figures into benchmarks/results/generation.json (keeping the checker's own keys), or
with `--design NAME` under NAME in generation_designs.json, the table of designs tried.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from PIL import Image
from rich.console import Console
from rich.table import Table

from polymodal import load
from polymodal.data import load_records
from polymodal.data.synthetic.shapes import PROMPT_CATEGORIES
from polymodal.evaluate.generation_metrics import clip_score, frechet_distance, r_precision
from polymodal.evaluate.geneval import prompt_set, score
from polymodal.models.generative.diffusion import sampling_with, write_grid
from polymodal.utils import progress_bar, write_json

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "generation.json"
DESIGNS = RESULTS.with_name("generation_designs.json")
CHUNK = 16  # prompts sampled together


def sample(model, prompts: list[str], scheduler: str, steps: int, guidance: float, label: str) -> list[Image.Image]:
    """One image per prompt, prompt k seeded with k (so two runs over the same prompts share their
    starting noise). The empty prompt is the unconditional model: diffusers' pipeline is called
    directly, since `generate` refuses an empty prompt."""
    pipe, images = model.pipeline, []
    with sampling_with(pipe, scheduler), progress_bar(True) as bar:
        task = bar.add_task(label, total=len(prompts))
        for start in range(0, len(prompts), CHUNK):
            chunk = prompts[start:start + CHUNK]
            seeds = [torch.Generator().manual_seed(start + k) for k in range(len(chunk))]
            images += pipe(chunk, num_inference_steps=steps, guidance_scale=guidance, generator=seeds,
                           height=model.image_size, width=model.image_size).images
            bar.advance(task, len(chunk))
    return images


def learned_scores(aligned_path: str, images, prompts: list[str], real: list[Image.Image]) -> dict:
    aligned = load(aligned_path)
    generated, truth = aligned.encode_image(images).numpy(), aligned.encode_image(real).numpy()
    return {"frechet_distance": frechet_distance(generated, truth), "clip_score": clip_score(aligned, images, prompts),
            "r_precision": r_precision(aligned, images, prompts)}


def table(figures: dict, rows: list[tuple[str, str, str]]) -> None:
    out = Table(title="Text-to-image on ShapesWorld: GenEval-style checker scores")
    for column in ("figure", "target", "polymodal", "unconditional", "shuffled text"):
        out.add_column(column)
    for key, label, target in rows:
        out.add_row(label, target, *(f"{figures[run].get(key, float('nan')):.3f}"
                                     for run in ("main", "uncond", "shuffled")))
    Console().print(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--aligned", default=None)
    ap.add_argument("--per-category", type=int, default=50)
    ap.add_argument("--solver-prompts", type=int, default=96)
    ap.add_argument("--guidance", type=float, default=3.0)
    ap.add_argument("--design", default=None, help="record the figures under this name in generation_designs.json "
                                                   "(a design compared), not in generation.json")
    args = ap.parse_args()
    model, data = load(args.model), load_records(args.data)
    test, unseen = data.split("test").records, data.split("test_unseen").records
    specs = prompt_set(test, args.per_category, seed=0)
    unseen_specs = prompt_set(unseen, args.per_category, seed=0, unseen_only=True)
    prompts = [s["text"] for s in specs]
    start = time.perf_counter()
    images = sample(model, prompts, "dpm++", 20, args.guidance, "DPM-Solver++ 20")
    sampling_seconds = time.perf_counter() - start
    main_scores = score(images, specs)
    uncond = score(sample(model, [""] * len(specs), "dpm++", 20, args.guidance, "unconditional"), specs)
    shuffled = score(sample(model, prompts[1:] + prompts[:1], "dpm++", 20, args.guidance, "shuffled"), specs)
    unseen_scores = score(sample(model, [s["text"] for s in unseen_specs], "dpm++", 20, args.guidance, "unseen"),
                          unseen_specs)
    meta = json.loads((Path(args.model) / "polymodal.json").read_text())
    figures = {**main_scores, "unseen_overall": unseen_scores["overall"],
               "unseen": unseen_scores, "unconditional": uncond, "shuffled_text": shuffled,
               "train_samples_per_s": meta.get("train_samples_per_s"), "train_steps": meta.get("steps"),
               "train_seconds": meta.get("seconds", 0) + meta.get("vae_seconds", 0),
               "vae_samples_per_s": meta.get("vae_samples_per_s"),
               "sample_images_per_s": round(len(specs) / sampling_seconds, 2), "prompts": len(specs),
               "guidance": args.guidance}
    if args.solver_prompts:
        figures |= solver_gap(model, specs, args.solver_prompts, args.guidance)
    if args.aligned:
        real = [Image.open(data.path(r.image)).convert("RGB") for r in test]
        figures |= learned_scores(args.aligned, images, prompts, real)
    rows = [(c, c.replace("_", " "), {"position": ">= 0.75", "colour_attribution": ">= 0.75"}.get(c, ""))
            for c in PROMPT_CATEGORIES] + [("overall", "overall", ">= 0.85")]
    table({"main": main_scores, "uncond": uncond, "shuffled": shuffled}, rows)
    Console().print(f"unseen colour-shape pairs: overall {figures['unseen_overall']:.3f} (target >= 0.70); "
                    f"training {figures['train_samples_per_s']} samples/s")
    if args.design:  # one design of several tried: kept beside the others, the headline file untouched
        designs = json.loads(DESIGNS.read_text()) if DESIGNS.is_file() else {}
        write_json(DESIGNS, {**designs, args.design: {"model": args.model, **figures}})
        return
    results = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    write_json(RESULTS, {**results, **figures})
    write_samples(images, specs)


def solver_gap(model, specs: list[dict], prompts: int, guidance: float) -> dict:
    """DDPM at 1,000 steps against DPM-Solver++ at 20 on `prompts` of the specs (spread over the
    categories), the same seeds."""
    subset = specs[:: max(1, len(specs) // prompts)][:prompts]
    texts = [s["text"] for s in subset]
    few = score(sample(model, texts, "dpm++", 20, guidance, "solver subset, DPM-Solver++ 20"), subset)["overall"]
    many = score(sample(model, texts, "ddpm", 1000, guidance, "solver subset, DDPM 1000"), subset)["overall"]
    Console().print(f"DDPM-1000 {many:.3f} vs DPM-Solver++-20 {few:.3f} on {len(subset)} prompts: gap "
                    f"{many - few:+.3f} (target <= 0.02)")
    return {"solver20_gap": many - few, "solver_subset": {"dpm20": few, "ddpm1000": many, "prompts": len(subset)}}


def write_samples(images: list[Image.Image], specs: list[dict], per_category: int = 8) -> None:
    """A row of samples per category, to look at beside the numbers."""
    picked = [next(im for k, (im, s) in enumerate(zip(images, specs)) if s["category"] == c and
                   sum(t["category"] == c for t in specs[:k]) == i)
              for c in PROMPT_CATEGORIES if any(s["category"] == c for s in specs) for i in range(per_category)]
    write_grid(picked, per_category, RESULTS.with_name("generation_samples.png"))


if __name__ == "__main__":
    main()
