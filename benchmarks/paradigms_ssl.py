"""Self-supervised pretraining, then contrastive alignment, against alignment alone, at equal compute.

    python benchmarks/paradigms_ssl.py [--budget 80] [--quick] [--data DIR] [--out runs/paradigms_ssl]

Four runs of one preset (shapes-vit-tiny: MAE needs a ViT, and one architecture keeps the
comparison about the training alone), each given the same T seconds of training in all:
  contrastive   contrastive alignment for T (the baseline)
  simclr        SimCLR on the image tower for T/2, then alignment for T/2 from it
  mae           MAE on the image tower for T/2, then alignment for T/2
  mlm           masked language modelling on the text tower for T/2, then alignment for T/2
Each is evaluated on ShapesWorld's test split (R@1/5/10 both ways) and its unseen colour-shape
combinations (test_unseen, on a gallery of the same size). The default T (80 s, 6,000 training
images) runs all four in under 8 minutes on one core; `--quick` checks the script in about two.

`run_paradigms_ssl()` is what `polymodal lab paradigms` calls; it writes
benchmarks/results/paradigms_ssl.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from polymodal.data import load_records
from polymodal.data.synthetic.shapes import ShapesConfig, generate
from polymodal.evaluate import evaluate
from polymodal.lab.paradigms import retrieval_row
from polymodal.models.checkpoint import load_checkpoint
from polymodal.train.loop import TrainConfig, train
from polymodal.train.pretrain import PretrainConfig, pretrain
from polymodal.utils import write_json

RESULTS = Path(__file__).parent / "results" / "paradigms_ssl.json"
DEFAULT_BUDGET = 80.0  # seconds of training per run, pretraining included
PARADIGMS = {"contrastive": None, "simclr": "simclr", "mae": "mae", "mlm": "mlm"}  # run -> pretraining objective
# `--control`: alignment alone for T/2 (not equal compute): does pretraining beat simply not spending its half?
CONTROL = "contrastive_half"
console = Console(width=160)  # the table has 12 columns; a pipe would get 80


def _recalls(results: dict) -> dict:
    """The lab's retrieval row, and the unseen-combination gap on a same-size gallery."""
    row = retrieval_row(results)
    gap = results.get("unseen_gap")
    if gap:
        row |= {"seen_t2i_R@1_same_gallery": gap["seen_R@1"], "unseen_gap": gap["gap"]}
    return row


def run_one(name: str, objective: str | None, data: Path, out: Path, budget: float, model: str,
            max_images: int | None, progress: bool) -> dict:
    """Pretrain (if `objective`) for half the budget, align for the rest, evaluate."""
    align_budget, init_from = (budget / 2 if name == CONTROL else budget), []
    console.rule(f"{name}: {objective or 'no'} pretraining, {model}, {align_budget:.0f} s in all")
    row: dict = {"run": name, "pretraining": objective}
    if objective:
        t = time.perf_counter()
        pre_dir = pretrain(PretrainConfig(data=str(data), out=str(out / f"{name}_pretrain"), objective=objective,
                                          model=model, time_budget=budget / 2, progress=progress))
        meta = json.loads((pre_dir / "config.json").read_text())["pretraining"]
        row |= {"pretrain_steps": meta["step"], "pretrain_seconds": meta["seconds"],
                "pretrain_wall_seconds": round(time.perf_counter() - t, 1), "pretrain_figures": meta["figures"]}
        align_budget, init_from = budget - meta["seconds"], [str(pre_dir)]
    align_dir = train(TrainConfig(data=str(data), out=str(out / name), model=model, epochs=10_000,
                                  time_budget=align_budget, eval_images=0, init_from=init_from, progress=progress))
    meta = json.loads((align_dir / "config.json").read_text())
    row |= {"align_steps": meta["step"], "align_seconds": round(align_budget, 1)}
    results = evaluate(load_checkpoint(align_dir), load_records(data), max_images=max_images, progress=False)
    return row | _recalls(results)


def run_paradigms_ssl(data: Path | None = None, out: Path = Path("runs/paradigms_ssl"), budget: float = DEFAULT_BUDGET,
                      model: str = "shapes-vit-tiny", n_train: int = 6000, max_images: int | None = 1000,
                      runs: tuple[str, ...] = tuple(PARADIGMS), results_path: Path | None = RESULTS,
                      progress: bool = True) -> dict:
    """Run the paradigms on `data` (a ShapesWorld of `n_train` images generated in `out` when None);
    returns (and writes to `results_path`) the table and each run's pretraining figures."""
    out.mkdir(parents=True, exist_ok=True)
    if data is None:
        data = out / "data"
        if not (data / "manifest.jsonl").exists():
            generate(data, ShapesConfig(n_train=n_train, n_val=200, n_test=max_images or 1000,
                                        n_unseen=max_images or 1000), workers=1, progress=progress)
    t = time.perf_counter()
    rows = [run_one(name, PARADIGMS.get(name), data, out, budget, model, max_images, progress) for name in runs]
    base = next((r for r in rows if r["run"] == "contrastive"), None)
    for r in rows:  # ratios to alignment alone: machines are noisy, ratios travel better than figures
        if base and base["t2i_R@1"]:
            r["t2i_R@1_ratio"] = round(r["t2i_R@1"] / base["t2i_R@1"], 3)
    report = {"budget_seconds": budget, "model": model, "data": str(data), "max_images": max_images,
              "minutes": round((time.perf_counter() - t) / 60, 2), "table": rows,
              "best_t2i_R@1": max(rows, key=lambda r: r["t2i_R@1"])["run"]}
    if results_path:
        write_json(results_path, report)
    return report


def print_table(report: dict) -> None:
    table = Table(title=f"pretraining then alignment, {report['budget_seconds']:.0f} s per run ({report['model']})")
    cols = [("run", "run"), ("pre steps", "pretrain_steps"), ("align steps", "align_steps"), ("t2i R@1", "t2i_R@1"),
            ("R@5", "t2i_R@5"), ("R@10", "t2i_R@10"), ("i2t R@1", "i2t_R@1"), ("R@5", "i2t_R@5"),
            ("R@10", "i2t_R@10"), ("unseen t2i R@1", "unseen_t2i_R@1"), ("gap", "unseen_gap"),
            ("ratio", "t2i_R@1_ratio")]
    for title, _ in cols:
        table.add_column(title, justify="right")
    for r in report["table"]:
        table.add_row(*(_cell(r.get(key)) for _, key in cols))
    console.print(table)


def _cell(value) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budget", type=float, default=DEFAULT_BUDGET, help="training seconds per run, in all")
    ap.add_argument("--data", type=Path, default=None, help="ShapesWorld directory (default: generate one)")
    ap.add_argument("--out", type=Path, default=Path("runs/paradigms_ssl"))
    ap.add_argument("--model", default="shapes-vit-tiny")
    ap.add_argument("--n-train", type=int, default=6000, help="training images of the generated ShapesWorld")
    ap.add_argument("--results", type=Path, default=RESULTS, help="where the JSON goes")
    ap.add_argument("--control", action="store_true", help=f"also run {CONTROL}: alignment alone for T/2")
    ap.add_argument("--quick", action="store_true", help="20 s per run on 3,000 images: checks the script")
    args = ap.parse_args()
    runs = (*PARADIGMS, CONTROL) if args.control else tuple(PARADIGMS)
    if args.quick:
        report = run_paradigms_ssl(args.data, args.out / "quick", 20.0, args.model, n_train=3000, max_images=300,
                                   runs=runs, results_path=None)
    else:
        report = run_paradigms_ssl(args.data, args.out, args.budget, args.model, n_train=args.n_train,
                                   runs=runs, results_path=args.results)
    print_table(report)
    console.print(f"{report['minutes']:.1f} minutes" + ("" if args.quick else f"; wrote {args.results}"))


if __name__ == "__main__":
    main()
