"""The VQA fusion targets on Sort-of-CLEVR (issue 5), in one run.

    python benchmarks/vqa_targets.py [--budget 1800] [--baseline-budget 300] [--dropout-budget 600]
                                     [--n-train 9800] [--threads 2] [--out runs/bench-vqa]
                                     [--only target|late|dropout] [--reuse]

1. cross-attention (xattn) from pixels for --budget seconds: relational >= 94 %, non-relational
   >= 98 % on the test split, with the real time and the accuracy curve;
2. the late-fusion baseline (the paper's CNN+MLP) for --baseline-budget seconds: its relational
   accuracy, the gap of the paper;
3. xattn with and without modality dropout for --dropout-budget seconds each: how much accuracy
   falls with the image noised.
Every number is printed beside its target; everything is also in OUT/*/results.json and report.html.
The parts can run in parallel processes (`--only target` in one, `--only late` then `--only dropout`
in another, each with `--threads 1`); `--reuse` then prints the table from their results.

Its figures are written to benchmarks/results/vqa_targets.json (about an hour; not yet committed).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from polymodal.data.synthetic.sort_of_clevr import SortOfClevrConfig, generate
from polymodal.lab.vqa import LabConfig, run_lab
from polymodal.utils import write_json

console = Console()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budget", type=float, default=1800.0, help="training seconds of the target model")
    ap.add_argument("--model", default="xattn", help="the target model (xattn or rn)")
    ap.add_argument("--baseline-budget", type=float, default=300.0)
    ap.add_argument("--dropout-budget", type=float, default=600.0)
    ap.add_argument("--dropout", type=float, default=0.3, help="modality dropout probability")
    ap.add_argument("--n-train", type=int, default=9800, help="training images (the paper: 9,800)")
    ap.add_argument("--n-test", type=int, default=1000, help="test images (the paper: 200)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (1 is faster on a busy shared machine)")
    ap.add_argument("--out", type=Path, default=Path("runs/bench-vqa"))
    ap.add_argument("--seed", type=int, default=0, help="model seed (the data is always the same)")
    ap.add_argument("--only", choices=("target", "late", "dropout"), help="run this part only")
    ap.add_argument("--reuse", action="store_true", help="reuse the parts whose OUT/PART/results.json exists")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    data = args.out / "data"
    if not (data / "manifest.jsonl").exists():
        t = time.perf_counter()
        generate(data, SortOfClevrConfig(n_train=args.n_train, n_val=200, n_test=args.n_test))
        console.print(f"generated {args.n_train + 200 + args.n_test} images in {time.perf_counter() - t:.0f}s")

    def lab(name: str, models: list[str], budget: float, **kw) -> dict | None:
        previous = args.out / name / "results.json"
        if args.only and args.only != name:
            return json.loads(previous.read_text()) if previous.exists() else None
        if args.reuse and previous.exists():
            console.print(f"reusing {previous}")
            return json.loads(previous.read_text())
        cfg = LabConfig(data=str(data), out=str(args.out / name), models=models, time_budget=budget,
                        eval_every=max(30.0, budget / 15), seed=args.seed, **kw)
        return run_lab(cfg)

    target = lab("target", [args.model], args.budget, baselines=True)
    late = lab("late", ["late"], args.baseline_budget, baselines=False)
    drop = lab("dropout", [args.model], args.dropout_budget, baselines=False, modality_dropout=args.dropout)
    if None in (target, late, drop):
        console.print(f"part '{args.only}' done; when every part has run, `--reuse` prints the table")
        return

    t = target["models"][args.model]
    acc = t["test"]["clean"]
    first_hit = next((p["seconds"] for p in t["curve"]
                      if p.get("relational", 0) >= 0.94 and p.get("non-relational", 0) >= 0.98), None)
    late_acc = late["models"]["late"]["test"]["clean"]
    plain, dropped = drop["models"][args.model]["test"], drop["models"][f"{args.model}+mdrop{args.dropout:g}"]["test"]
    fall = lambda r: r["clean"]["overall"] - r["image noised"]["overall"]  # noqa: E731

    table = Table(title=f"Sort-of-CLEVR targets ({args.n_train} training images, {target['test_images']} test images, "
                        f"{args.threads} torch thread(s))")
    for col in ("target", "aim", "reached"):
        table.add_column(col)
    table.add_row(f"{args.model}: relational / non-relational (test)", ">= 94 % / >= 98 % in 30 min",
                  f"{100 * acc['relational']:.1f} % / {100 * acc['non-relational']:.1f} % "
                  f"after {t['train_seconds'] / 60:.1f} min "
                  + (f"training ({t['wall_seconds'] / 60:.1f} min wall)" if t.get("wall_seconds") else "training"))
    table.add_row("  first validation point at both targets", "",
                  f"{first_hit / 60:.1f} min" if first_hit else "not reached")
    table.add_row("  question-only / image-only baselines", "", " / ".join(
        f"{100 * target['baselines'][k]['relational']:.1f} % / {100 * target['baselines'][k]['non-relational']:.1f} %"
        for k in ("question only", "image only")))
    table.add_row("late fusion (CNN+MLP): relational / non-relational", "paper: 63 % / > 94 %",
                  f"{100 * late_acc['relational']:.1f} % / {100 * late_acc['non-relational']:.1f} % after "
                  f"{late['models']['late']['train_seconds'] / 60:.1f} min")
    table.add_row("accuracy lost with the image noised", "smaller with modality dropout",
                  f"{100 * fall(plain):.1f} points without, {100 * fall(dropped):.1f} with dropout {args.dropout:g}")
    console.print(table)
    summary = {"target": {"clean": acc, "train_seconds": t["train_seconds"], "wall_seconds": t["wall_seconds"],
                          "first_at_target_s": first_hit, "curve": t["curve"]},
               "late": late_acc, "noised_drop": {"without": fall(plain), "with": fall(dropped)},
               "baselines": target["baselines"], "threads": args.threads, "n_train": args.n_train}
    write_json(args.out / "summary.json", summary)
    write_json(Path(__file__).parent / "results" / "vqa_targets.json", summary)
    console.print(f"reports: {args.out}/*/report.html")


if __name__ == "__main__":
    main()
