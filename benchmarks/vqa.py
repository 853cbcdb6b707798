"""The fusion lab's targets on Sort-of-CLEVR (issues 5 and 15), in one run.

    python benchmarks/vqa.py [--budget 1800] [--parts xattn,rn,film,early,late,ternary] [--threads 1]
                             [--lr LR] [--batch-images 8]
                             [--out runs/bench-vqa] [--reuse]

It generates Sort-of-CLEVR as the generator's default draws it (each image a random rendering
variant: PIL exact / jittered / supersampled, OpenCV; size and colour jitter, blur, JPEG) with the
paper's 9,800 training images, 200 validation and 1,000 test images, and 1,000 `test_heldout`
images drawn only by a variant training never sees (OpenCV anti-aliased, heavy JPEG). Then each
part is a `polymodal lab vqa` run (results.json, results.md, report.html under OUT/PART):

- one per fusion design (xattn, rn, film, early, late), each trained for --budget seconds and
  tested on `test` and `test_heldout`; the xattn part also trains the image-only baseline.
  Target: relational >= 94 %, non-relational >= 98 % (late fusion: beside the paper's 63 / 94);
  render shift (clean minus held-out accuracy, averaged over question types) <= 2 points for
  xattn and rn;
- ternary: xattn on the same scenes with the public generator's ternary questions added, for
  --ternary-budget seconds: accuracy per question family;
- dropout (only when asked for): xattn with and without modality dropout, --dropout-budget each.

Parts can run in parallel processes (`--parts rn --threads 1` in each); `--reuse` then assembles
the table from their results.json. Figures go to benchmarks/results/vqa.json.
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
from polymodal.lab.vqa import HELDOUT, MODELS, PAPER, LabConfig, run_lab
from polymodal.utils import write_json

console = Console()
RESULTS = Path(__file__).parent / "results" / "vqa.json"
SHIFT_MODELS = ("xattn", "rn")


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budget", type=float, default=1800.0, help="training seconds of each design")
    ap.add_argument("--parts", default="xattn,rn,film,early,late,ternary",
                    help="comma-separated: designs, 'ternary', 'dropout'")
    ap.add_argument("--ternary-budget", type=float, default=600.0)
    ap.add_argument("--dropout-budget", type=float, default=600.0)
    ap.add_argument("--dropout", type=float, default=0.3, help="modality dropout probability")
    ap.add_argument("--n-train", type=int, default=9800, help="training images (the paper: 9,800)")
    ap.add_argument("--n-test", type=int, default=1000, help="test and test_heldout images (the paper: 200)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 per process on a shared machine)")
    ap.add_argument("--out", type=Path, default=Path("runs/bench-vqa"))
    ap.add_argument("--seed", type=int, default=0, help="model seed (the data is always the same)")
    ap.add_argument("--lr", type=float, default=None,
                    help="peak learning rate (warm-up, then cosine to the end; default: each preset's own)")
    ap.add_argument("--batch-images", type=int, default=8, help="images per step, each with all its questions")
    ap.add_argument("--reuse", action="store_true", help="reuse every part whose OUT/PART/results.json exists")
    return ap.parse_args()


def ensure_data(directory: Path, args, ternary: bool) -> Path:
    if not (directory / "manifest.jsonl").exists():
        started = time.perf_counter()
        generate(directory, SortOfClevrConfig(n_train=args.n_train, n_val=200, n_test=args.n_test,
                                              n_heldout=args.n_test, ternary=ternary))
        console.print(f"generated {directory} in {time.perf_counter() - started:.0f}s")
    return directory


def run_part(part: str, args) -> dict:
    """One part's lab results (reused from OUT/PART/results.json with --reuse)."""
    previous = args.out / part / "results.json"
    if args.reuse and previous.exists():
        console.print(f"reusing {previous}")
        return json.loads(previous.read_text())
    data = ensure_data(args.out / ("data-ternary" if part == "ternary" else "data"), args, part == "ternary")
    model = "xattn" if part in ("ternary", "dropout") else part
    budget = {"ternary": args.ternary_budget, "dropout": args.dropout_budget}.get(part, args.budget)
    cfg = LabConfig(data=str(data), out=str(args.out / part), models=[model], time_budget=budget,
                    eval_every=max(30.0, budget / 15), seed=args.seed, lr=args.lr, batch_images=args.batch_images,
                    baselines=part == "xattn", modality_dropout=args.dropout if part == "dropout" else 0.0)
    return run_lab(cfg)


def render_shift(test: dict) -> float:
    """Clean minus held-out-rendering accuracy, averaged over question types."""
    types = [k for k in test["clean"] if k.startswith("type/") and k in test[HELDOUT]]
    return sum(test["clean"][k] - test[HELDOUT][k] for k in types) / len(types)


def first_at_target(curve: list[dict]) -> float | None:
    return next((p["seconds"] for p in curve
                 if p.get("relational", 0) >= 0.94 and p.get("non-relational", 0) >= 0.98), None)


def summarise(labs: dict[str, dict], args) -> dict:
    summary: dict = {"budget_s": args.budget, "threads": args.threads, "n_train": args.n_train, "paper": PAPER}
    for name in MODELS:
        if name not in labs:
            continue
        e = labs[name]["models"][name]
        clean = e["test"]["clean"]
        summary[name] = {"relational": clean["relational"], "nonrelational": clean["non-relational"],
                         "per_type": {k[5:]: v for k, v in clean.items() if k.startswith("type/")},
                         "heldout_rendering": e["test"].get(HELDOUT), "train_seconds": e["train_seconds"],
                         "steps": e["steps"], "questions_seen": e["questions_seen"],
                         "questions_per_s": e["questions_seen"] / e["train_seconds"],
                         "first_at_target_s": first_at_target(e["curve"]), "curve": e["curve"]}
    summary["render_shift_drop"] = {m: render_shift(labs[m]["models"][m]["test"]) for m in SHIFT_MODELS if m in labs}
    if "xattn" in labs:
        summary["baselines"] = labs["xattn"]["baselines"]
    if "ternary" in labs:
        clean = labs["ternary"]["models"]["xattn"]["test"]["clean"]
        summary["ternary"] = {"model": "xattn", "budget_s": labs["ternary"]["time_budget_s"],
                              **{k: v for k, v in clean.items() if not k.startswith("type/") or k[5:] in
                                 ("between", "line", "obtuse")}}
    if "dropout" in labs:
        fall = lambda t: t["clean"]["overall"] - t["image noised"]["overall"]  # noqa: E731
        models = labs["dropout"]["models"]
        summary["noised_drop"] = {"without": fall(models["xattn"]["test"]),
                                  "with": fall(models[f"xattn+mdrop{args.dropout:g}"]["test"])}
    return summary


def print_table(summary: dict) -> None:
    pct = lambda v: f"{100 * v:.1f}" if isinstance(v, float) else "-"  # noqa: E731
    table = Table(title=f"Sort-of-CLEVR, {summary['n_train']:,} training images, {summary['budget_s'] / 60:.0f} "
                        f"min per design, {summary['threads']} thread(s); test %")
    for col in ("design", "relational", "non-relational", "aim", "first at target", "held-out rendering",
                "render shift (points)"):
        table.add_column(col)
    for name in MODELS:
        if name not in summary:
            continue
        s, held = summary[name], summary[name]["heldout_rendering"] or {}
        aim = "paper 63 / 94" if name == "late" else ">= 94 / >= 98"
        hit = s["first_at_target_s"]
        shift = summary["render_shift_drop"].get(name)
        table.add_row(name, pct(s["relational"]), pct(s["nonrelational"]), aim,
                      f"{hit / 60:.1f} min" if hit else "not reached",
                      f"{pct(held.get('relational'))} / {pct(held.get('non-relational'))}",
                      f"{100 * shift:.1f} (aim <= 2)" if shift is not None else "")
    console.print(table)
    if "ternary" in summary:
        t = summary["ternary"]
        console.print("ternary part (xattn): " + ", ".join(f"{k} {pct(v)}" for k, v in t.items()
                                                          if isinstance(v, float) and k != "budget_s"))


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    parts = [p for p in args.parts.split(",") if p]
    unknown = set(parts) - set(MODELS) - {"ternary", "dropout"}
    if unknown:
        raise SystemExit(f"unknown parts: {', '.join(sorted(unknown))}")
    labs = {part: run_part(part, args) for part in parts}
    if args.reuse:  # assemble everything already measured
        labs |= {p: json.loads((args.out / p / "results.json").read_text())
                 for p in (*MODELS, "ternary", "dropout") if p not in labs and (args.out / p / "results.json").exists()}
    summary = summarise(labs, args)
    print_table(summary)
    write_json(args.out / "summary.json", summary)
    if args.reuse or len(parts) > 1:
        write_json(RESULTS, summary)
        console.print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
