"""Text-to-video on Moving ShapesWorld, scored by the exact motion checker (issue 13).

    python benchmarks/video_generation.py --model runs/t2v/model --data runs/t2v/data \
        [--prompts 240] [--retrieval-budget 6m | --no-retrieval]

The model is a `polymodal train-video-generator` pipeline trained on DATA's train split, e.g.

    polymodal data moving-shapes runs/t2v/data --n 10000
    polymodal train-video-generator runs/t2v/data --out runs/t2v/model --steps 100000 --time-budget 42m --lr 8e-4

Prompts are the canonical captions of test clips (`describe_clip(canonical=True)`); "held out"
are those no training clip was captioned with (most two-object clips), and "unseen" those of
test_unseen, whose clips name a colour-shape pair training never showed. Each prompt gets one
clip (DPM-Solver++, 20 steps, guidance `--guidance`, seed = its index), and the motion checker
tests every event the prompt states on it. Figures:
- video_motion_accuracy: of held-out prompts that state a move, the fraction whose clip moves
  every named mover in its stated direction (the issue's target, >= 0.80);
- per event (move, stay, grow, recolour) and whole-clip accuracy (every stated event happens);
- the same for the unconditional model (empty prompt) and shuffled prompts (each clip drawn from
  another prompt of the set), which show chance;
- text -> video retrieval R@1 beside text -> first frame (an image), from a video-text model
  trained here for `--retrieval-budget` (`polymodal train-video-retrieval`).
Writes the figures into benchmarks/results/generation.json (beside the text-to-image ones); with
`--design NAME`, under NAME in generation_designs.json instead (a video design compared).
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from polymodal.cli_options import parse_duration
from polymodal.data import load_records
from polymodal.data.synthetic.moving_shapes import describe_clip
from polymodal.evaluate.motion_checker import event_results
from polymodal.models.generative.diffusion import sampling_with
from polymodal.models.generative.video_diffusion import load_text_to_video
from polymodal.train.video_retrieval import VideoRetrievalConfig, train_video_retrieval
from polymodal.utils import progress_bar, write_json

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "generation.json"
CHUNK = 8  # prompts sampled together
EVENTS = ("move", "stay", "grow", "recolour")


def prompt_specs(records, n: int, seed: int = 0) -> list[dict]:
    """`n` test clips in a seeded order, each as {"text": canonical caption, "objects", "events"}."""
    picked = random.Random(f"video-bench/{seed}").sample(list(records), min(n, len(records)))
    return [{"text": describe_clip(r.attributes, random.Random(0), canonical=True), **r.attributes} for r in picked]


def sample(model, prompts: list[str], guidance: float, label: str, steps: int = 20) -> list:
    """One clip per prompt, prompt k seeded with k. The pipeline is called directly, since
    `generate` refuses the empty prompt (the unconditional model)."""
    pipe, clips = model.pipeline, []
    with sampling_with(pipe, "dpm++"), progress_bar(True) as bar:
        task = bar.add_task(label, total=len(prompts))
        for start in range(0, len(prompts), CHUNK):
            chunk = prompts[start:start + CHUNK]
            seeds = [torch.Generator().manual_seed(start + k) for k in range(len(chunk))]
            clips.extend(pipe(chunk, num_frames=model.frames, num_inference_steps=steps, guidance_scale=guidance,
                              generator=seeds, height=model.image_size, width=model.image_size,
                              output_type="np").frames)  # (B, T, S, S, 3) in [0, 1]
            bar.advance(task, len(chunk))
    return [(clip * 255).round().astype("uint8") for clip in clips]  # (T, S, S, 3) each


def motion_scores(clips: list, specs: list[dict]) -> dict[str, float]:
    """Per event kind, the fraction of stated events that happen; "clip": every stated event of a
    clip happens; "direction": of clips that state a move, every mover goes its stated way."""
    hits: dict[str, list[bool]] = {kind: [] for kind in (*EVENTS, "clip", "direction")}
    for clip, spec in zip(clips, specs, strict=True):
        results = event_results(clip, spec)
        for event, ok in zip(spec["events"], results, strict=True):
            hits[event["event"]].append(ok)
        hits["clip"].append(all(results))
        moves = [ok for event, ok in zip(spec["events"], results, strict=True) if event["event"] == "move"]
        if moves:
            hits["direction"].append(all(moves))
    return {kind: sum(h) / len(h) for kind, h in hits.items() if h} | {"prompts": len(specs)}


def retrieval(data: str, budget: float) -> dict:
    with tempfile.TemporaryDirectory() as out:
        result = train_video_retrieval(VideoRetrievalConfig(data=data, out=out, time_budget=budget, steps=100_000))
    return {"text_to_video_r1": result["text_to_video_r1"], "text_to_first_frame_r1": result["text_to_image_r1"],
            "video_to_text_r1": result["video_to_text_r1"], "retrieval_steps": result["steps"]}


def table(runs: dict[str, dict]) -> None:
    out = Table(title="Text-to-video on Moving ShapesWorld: motion checker")
    out.add_column("prompts")
    for kind in ("direction", *EVENTS, "clip"):
        out.add_column(kind + (" (>= 0.80)" if kind == "direction" else ""))
    for name, scores in runs.items():
        out.add_row(f"{name} ({scores['prompts']})", *(f"{scores[k]:.3f}" if k in scores else "-"
                                                         for k in ("direction", *EVENTS, "clip")))
    Console().print(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--prompts", type=int, default=240, help="test prompts (the unseen set gets half as many)")
    ap.add_argument("--guidance", type=float, default=3.0)
    ap.add_argument("--retrieval-budget", type=parse_duration, default=360.0)
    ap.add_argument("--no-retrieval", action="store_true", help="skip the retrieval model")
    ap.add_argument("--design", default=None, help="record the figures under this name in generation_designs.json "
                                                   "(a video design compared), not in generation.json")
    args = ap.parse_args()
    model, data = load_text_to_video(args.model), load_records(args.data)
    trained = {c for r in data.split("train").records for c in r.text}
    specs = prompt_specs(data.split("test").records, args.prompts)
    unseen = prompt_specs(data.split("test_unseen").records, args.prompts // 2)
    prompts = [s["text"] for s in specs]
    clips = sample(model, prompts, args.guidance, "test prompts")
    held_out = [k for k, s in enumerate(specs) if s["text"] not in trained]
    runs = {
        "test, held out": motion_scores([clips[k] for k in held_out], [specs[k] for k in held_out]),
        "test, all": motion_scores(clips, specs),
        "unseen pairs": motion_scores(sample(model, [s["text"] for s in unseen], args.guidance, "unseen"), unseen),
        "unconditional": motion_scores(sample(model, [""] * len(specs), args.guidance, "unconditional"), specs),
        "shuffled text": motion_scores(sample(model, prompts[1:] + prompts[:1], args.guidance, "shuffled"), specs),
    }
    table(runs)
    meta = json.loads((Path(args.model) / "polymodal.json").read_text())
    figures = {"video_motion_accuracy": runs["test, held out"]["direction"], "video": runs,
               "video_train_clips_per_s": meta.get("train_clips_per_s"), "video_train_steps": meta.get("steps"),
               "video_train_seconds": meta.get("seconds", 0) + meta.get("vae_seconds", 0),
               "video_guidance": args.guidance}
    if not args.no_retrieval:
        figures |= retrieval(args.data, args.retrieval_budget)
        Console().print(f"R@1 text -> video {figures['text_to_video_r1']:.3f}, text -> first frame "
                        f"{figures['text_to_first_frame_r1']:.3f}")
    target = RESULTS.with_name("generation_designs.json") if args.design else RESULTS
    results = json.loads(target.read_text()) if target.is_file() else {}
    write_json(target, {**results, args.design: {"model": args.model, **figures}} if args.design
               else {**results, **figures})


if __name__ == "__main__":
    main()
