"""CoCa joint training against contrastive-only training of the same tower (issue 12's target).

    python benchmarks/coca_joint.py [--steps 500] [--batch-size 64] [--caption-weight 1] [--seeds 0]
                                    [--n-train 6000] [--threads 1] [--out runs/coca_joint]

Both arms run the same trainer (`polymodal caption train --contrastive`) on the same ShapesWorld
data, with the same steps, batch, schedule, seed, hard negatives and initial aligned weights
(shapes-cnn-small, created before the decoder); only the loss differs:
  contrastive   --caption-weight 0: CLIP InfoNCE with NegCLIP hard negatives; the decoder is idle
  joint         --caption-weight W: the same + W x the captioning loss of a shapes-captioner-small
                decoder cross-attending to the tower's region tokens
Each arm's aligned half (OUT/ARM-seedS/aligned) is then evaluated as any aligned model is
(`polymodal.evaluate` on test and test_unseen): retrieval R@1/5 both ways, the compositional
probes, attribute zero-shot; the joint arm's captions are scored for facts as a check that its
decoder learnt. Prints the side-by-side table (means over seeds) and writes
benchmarks/results/coca_joint.json.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from polymodal.data import load_records
from polymodal.data.pairs import ImageTextPairs
from polymodal.data.synthetic.shapes import ShapesConfig, generate
from polymodal.evaluate import evaluate
from polymodal.evaluate.caption_facts import score_captions
from polymodal.models.checkpoint import load_checkpoint
from polymodal.models.generative.captioner import load_captioner
from polymodal.train.captioner import CaptionTrainConfig, train_captioner
from polymodal.utils import write_json

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "coca_joint.json"
console = Console(width=130)


def figures(results: dict) -> dict[str, float]:
    """The flat figures compared: retrieval both ways, every probe family, zero-shot, unseen R@1."""
    test = results["test"]
    out = {f"{way} {k}": test[way][k] for way in ("text_to_image", "image_to_text") for k in ("R@1", "R@5")}
    out.update({f"probe {name}": p["accuracy"] for name, p in test.get("probes", {}).items()})
    out.update({f"zero-shot {k}": v for k, v in test.get("zero_shot", {}).items() if isinstance(v, float)})
    if "test_unseen" in results:
        out["test_unseen text_to_image R@1"] = results["test_unseen"]["text_to_image"]["R@1"]
    return out


def run_arm(args, data: Path, name: str, weight: float, seed: int) -> dict:
    out = args.out / f"{name}-seed{seed}"
    console.rule(f"{name} (caption weight {weight}), seed {seed}")
    trained = train_captioner(CaptionTrainConfig(
        data=str(data), out=str(out), model=args.captioner, aligned_model=args.aligned_model, contrastive=True,
        caption_weight=weight, steps=args.steps, batch_size=args.batch_size, lr=args.lr, weight_decay=0.1,
        seed=seed, device="cpu", progress=False))
    records = load_records(data)
    metrics = evaluate(load_checkpoint(out / "aligned"), records, max_images=args.eval_images, progress=False)
    arm = {"caption_weight": weight, "seed": seed, "training": trained, "figures": figures(metrics)}
    if weight:
        arm["captions"] = caption_facts(load_captioner(out), records.split("test"), args.caption_images)
    console.print(f"trained in {trained['seconds']} s: " + ", ".join(f"{k} {v:.3f}" for k, v in
                                                                     arm["figures"].items()))
    return arm


def caption_facts(captioner, test, limit: int) -> dict[str, float]:
    """Fact precision / recall / CHAIR-i of greedy captions of the first `limit` test images."""
    test.records = test.records[:limit]
    pairs = ImageTextPairs(test, captioner.config.image.image_size, progress=False)
    facts = score_captions(captioner.caption(pairs.images), [r.attributes for r in pairs.records])
    return {k: facts[k] for k in ("fact_precision", "fact_recall", "chair_i")}


def mean_figures(arms: list[dict]) -> dict[str, float]:
    return {k: statistics.fmean(a["figures"][k] for a in arms) for k in arms[0]["figures"]}


def print_table(contrastive: dict[str, float], joint: dict[str, float], args) -> None:
    table = Table(title=f"{args.aligned_model} tower, {args.steps} steps of {args.batch_size}, seeds {args.seeds}: "
                        f"contrastive only vs + {args.caption_weight} x captioning loss")
    for column in ("figure (test split)", "contrastive only", "contrastive + captioning", "difference"):
        table.add_column(column, justify="left" if column.startswith("figure") else "right")
    for k in contrastive:
        table.add_row(k, f"{contrastive[k]:.3f}", f"{joint[k]:.3f}", f"{joint[k] - contrastive[k]:+.3f}")
    console.print(table)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--caption-weight", type=float, default=1.0)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--aligned-model", default="shapes-cnn-small")
    ap.add_argument("--captioner", default="shapes-captioner-small")
    ap.add_argument("--n-train", type=int, default=6000)
    ap.add_argument("--eval-images", type=int, default=1000, help="test and test_unseen images evaluated")
    ap.add_argument("--caption-images", type=int, default=300, help="joint arm's test images captioned")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "coca_joint")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    data = args.out / "data"
    if not (data / "manifest.jsonl").is_file():
        generate(data, ShapesConfig(n_train=args.n_train, n_val=0, n_test=args.eval_images,
                                    n_unseen=args.eval_images // 2, seed=0), workers=1, progress=False)
    start = time.perf_counter()
    arms = {name: [run_arm(args, data, name, weight, seed) for seed in args.seeds]
            for name, weight in (("contrastive", 0.0), ("joint", args.caption_weight))}
    contrastive, joint = mean_figures(arms["contrastive"]), mean_figures(arms["joint"])
    print_table(contrastive, joint, args)
    write_json(RESULTS, {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": platform.processor() or
        platform.machine(), "threads": args.threads, "seconds": round(time.perf_counter() - start, 1),
        "budget": {"steps": args.steps, "batch_size": args.batch_size, "lr": args.lr, "weight_decay": 0.1,
                   "hard_negatives": 3, "n_train": args.n_train, "eval_images": args.eval_images,
                   "seeds": args.seeds},
        "aligned_model": args.aligned_model, "captioner": args.captioner, "caption_weight": args.caption_weight,
        "contrastive_only": contrastive, "joint": joint,
        "difference": {k: joint[k] - contrastive[k] for k in contrastive}, "runs": arms})
    console.print(f"figures: {RESULTS}")


if __name__ == "__main__":
    main()
