"""The foundation targets on ShapesWorld, in one run, beside a bag-of-words baseline.

    python benchmarks/shapes_targets.py [--budget 180] [--out runs/bench] [--skip-minilm]

Trains three models under the same time budget on the same data:
  polymodal   shapes-cnn-small (coordinate-pooled CNN, bidirectional GRU text tower, dense hard negatives)
  baseline    shapes-cnn-bow   (the same, with an order-blind bag-of-words text tower)
  LiT         shapes-cnn-minilm (the bundled all-MiniLM-L6-v2, locked, for the rephrasing test)
and prints every target with the figure reached and the polymodal/baseline ratio.

Its figures are written to benchmarks/results/shapes_targets.json (about 20 minutes; not yet committed).
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
from polymodal.models.checkpoint import load_checkpoint
from polymodal.train.loop import TrainConfig, train
from polymodal.utils import write_json

console = Console()


def run_model(name: str, preset: str, data: Path, out: Path, budget: float, max_images: int | None = None,
              **train_options) -> tuple[dict, float]:
    console.rule(f"{name}: {preset}")
    t = time.perf_counter()
    train(TrainConfig(data=str(data), out=str(out / name), model=preset, epochs=1000, time_budget=budget,
                      **train_options))
    train_s = time.perf_counter() - t
    model = load_checkpoint(out / name)
    # The LiT model is evaluated on its smaller test gallery only (MiniLM embeds ~110 captions/s).
    results = evaluate(model, load_records(data), splits=["test"] if max_images else None, max_images=max_images)
    if max_images is None:  # the rephrasing comparison runs on the LiT model's smaller gallery
        results["test_rephrase_2k"] = evaluate(model, load_records(data), splits=["test"], max_images=2000)["test"]
    (out / f"{name}.json").write_text(json.dumps(results, indent=2))
    return results, train_s


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budget", type=float, default=180.0, help="training seconds per model")
    ap.add_argument("--out", type=Path, default=Path("runs/bench"))
    ap.add_argument("--n-train", type=int, default=40000)
    ap.add_argument("--skip-minilm", action="store_true")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    data = args.out / "data"

    t = time.perf_counter()
    generate(data, ShapesConfig(n_train=args.n_train, n_val=1000, n_test=10000, n_unseen=2000))
    gen_s = time.perf_counter() - t
    n_images = args.n_train + 13000

    ours, ours_s = run_model("polymodal", "shapes-cnn-small", data, args.out, args.budget)
    base, base_s = run_model("baseline_bow", "shapes-cnn-bow", data, args.out, args.budget)
    lit = None
    if not args.skip_minilm:
        # The locked tower embeds each training caption once before the clock starts (about 250
        # captions/s on 2 cores), so it trains on one caption per image and is evaluated on a
        # 2,000-image gallery.
        lit, _ = run_model("lit_minilm", "shapes-cnn-minilm", data, args.out, args.budget, max_images=2000,
                           max_captions=1)

    def t2i(r, split="test"):
        return r[split]["text_to_image"]["R@1"]

    def probe(r, name):
        return r["test"]["probes"][name]["accuracy"]

    rows = [
        ("generation rate (images/s)", "thousands/s", f"{n_images / gen_s:,.0f}", "", ""),
        ("t2i R@1, 10,000-image gallery", ">= 0.90", f"{t2i(ours):.3f}", f"{t2i(base):.3f}",
         f"{t2i(ours) / max(t2i(base), 1e-9):.2f}x"),
        ("  exact-image R@1 (ceiling)", "reported",
         f"{ours['test']['text_to_image']['instance_R@1']:.3f} "
         f"({ours['test']['text_to_image']['instance_R@1_ceiling']:.3f})", "", ""),
        ("unseen - seen R@1 gap (same gallery)", "<= 0.05 drop", f"{ours['unseen_gap']['gap']:+.3f}",
         f"{base['unseen_gap']['gap']:+.3f}", ""),
        ("attribute binding probe", ">= 0.95", f"{probe(ours, 'attribute_binding'):.3f}",
         f"{probe(base, 'attribute_binding'):.3f}", ""),
        ("relation order probe", ">= 0.95", f"{probe(ours, 'relation_order'):.3f}",
         f"{probe(base, 'relation_order'):.3f}", ""),
        ("zero-shot colour (1-object images)", ">= 0.98", f"{ours['test']['zero_shot']['colour']:.3f}",
         f"{base['test']['zero_shot']['colour']:.3f}", ""),
        ("zero-shot shape (1-object images)", ">= 0.98", f"{ours['test']['zero_shot']['shape']:.3f}",
         f"{base['test']['zero_shot']['shape']:.3f}", ""),
        ("held-out rephrasing, 2k gallery: R@1 drop (scratch text)", "reported",
         f"{ours['test_rephrase_2k']['rephrased_R@1_drop']:.3f} "
         f"(R@1 {ours['test_rephrase_2k']['text_to_image']['R@1']:.3f})",
         f"{base['test_rephrase_2k']['rephrased_R@1_drop']:.3f}", ""),
    ]
    if lit:
        rows.append(("held-out rephrasing, 2k gallery: R@1 drop (locked MiniLM)", "reported",
                     f"{lit['test']['rephrased_R@1_drop']:.3f} (R@1 {t2i(lit):.3f})", "", ""))
    table = Table(title=f"ShapesWorld targets, {args.budget:.0f} s of training each (polymodal {ours_s:.0f} s, "
                        f"baseline {base_s:.0f} s wall incl. data loading)")
    for col in ("target", "aim", "polymodal", "bag-of-words baseline", "ratio"):
        table.add_column(col)
    for row in rows:
        table.add_row(*row)
    console.print(table)
    summary = {"budget_s": args.budget, "train_s": {"polymodal": ours_s, "baseline": base_s}, "rows": rows}
    write_json(args.out / "summary.json", summary)
    write_json(Path(__file__).parent / "results" / "shapes_targets.json", summary)


if __name__ == "__main__":
    main()
