"""Few-shot adaptation and federated training on ShapesWorld, each beside its baseline (issue 17).

    python benchmarks/paradigms_fewshot_fed.py [--quick] [--out runs/bench-paradigms]

Few-shot (baseline: the model's zero-shot classifier and a linear probe at the same shots): a small
aligned model (shapes-cnn-tiny) is trained on ShapesWorld, then the shape and colour of one-object
test images are classified from its frozen image embeddings at 1/2/4/8/16 shots (5 support draws
each), and the same probe/prototype curves on scikit-learn's digits (no text: no zero-shot).
  tip4_minus_zeroshot  Tip-Adapter at 4 shots minus zero-shot, on shape      (target >= 0)
  tip4_minus_linear4   Tip-Adapter at 4 shots minus linear probe at 4 shots (target >= 0)

Federated (baseline: centralised training on the union of the clients' data, equal rounds, equal
sequential steps, equal examples seen): 8 clients, label-skewed (each holds about two of the six
shapes), FedAvg; beside it FedProx and a modality mix (pairs, image-only, text-only clients).
  fedavg_ratio         FedAvg's text->image R@1 / centralised R@1            (target >= 0.9)

Writes benchmarks/results/paradigms_fewshot_fed.json. `run(out, quick)` is what the lab calls.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from polymodal.data import load_records
from polymodal.data.synthetic.shapes import ShapesConfig, generate
from polymodal.lab.paradigms import ParadigmsConfig, fewshot_curves
from polymodal.paradigms.federated_shapes import FederatedConfig, run_federated
from polymodal.utils import write_json

console = Console()
RESULTS = Path(__file__).parent / "results" / "paradigms_fewshot_fed.json"
FULL = {"n_train": 8000, "n_test": 2000, "model_steps": 1500, "seeds": 5, "rounds": 30, "local_steps": 5,
        "extras": True}
QUICK = {"n_train": 2000, "n_test": 500, "model_steps": 200, "seeds": 3, "rounds": 4, "local_steps": 3,
         "extras": False}


def shapes_data(out: Path, n_train: int, n_test: int) -> Path:
    data = out / f"shapes-{n_train}"
    if not (data / "manifest.jsonl").exists():
        generate(data, ShapesConfig(n_train=n_train, n_val=100, n_test=n_test, n_unseen=0, seed=17), workers=1)
    return data


def fewshot_figures(data: Path, out: Path, steps: int, seeds: int) -> dict:
    """Train the aligned model (the lab's few-shot backbone), then the learning curves of shape,
    colour and digits."""
    start = time.perf_counter()
    cfg = ParadigmsConfig(out=str(out), fewshot_steps=steps, fewshot_seeds=seeds)
    figures = fewshot_curves(cfg, data, out, load_records(data))
    return figures | {"seconds": time.perf_counter() - start}  # training the backbone (unless cached) and the curves


def federated_figures(data: Path, rounds: int, local_steps: int, extras: bool) -> dict:
    """FedAvg vs centralised (8 label-skewed clients); with `extras`, FedProx and a modality mix."""
    base = FederatedConfig(str(data), strategy="fedavg", clients=8, rounds=rounds, local_steps=local_steps,
                           partition="label-skew",
                           test_limit=1000)
    fedavg = run_federated(base)
    out = {"fedavg_ratio": fedavg["ratio_t2i_R@1"], "fedavg_ratio_i2t": fedavg["ratio_i2t_R@1"],
           "runs": {"fedavg": fedavg["federated"], "centralised": fedavg["centralised"]},
           "clients": fedavg["clients"], "config": fedavg["config"]}
    if extras:
        variants = {"fedprox": {"strategy": "fedprox", "mu": 0.1}, "fedavg_iid": {"partition": "iid"},
                    "fedavg_modality_mix": {"modalities": "pairs,image,text"}}
        for name, change in variants.items():
            cfg = FederatedConfig(**{**fedavg["config"], **change, "progress": True})
            out["runs"][name] = run_federated(cfg, centralised=False)["federated"]
    central = out["runs"]["centralised"]["final"]["t2i_R@1"]
    for run in out["runs"].values():
        run["ratio_t2i_R@1"] = run["final"]["t2i_R@1"] / max(central, 1e-9)
    return out


def print_tables(fewshot: dict, federated: dict) -> None:
    table = Table(title="few-shot accuracy at 4 shots (mean over draws)")
    for col in ("task", "zero-shot", "linear probe", "prototype", "Tip-Adapter"):
        table.add_column(col, justify="right")
    for name, c in fewshot["curves"].items():
        zs = f"{c['zero_shot']:.3f}" if c["zero_shot"] is not None else "n/a (no text)"
        cells = [f"{c['methods'][m][4]['mean']:.3f}" if m in c["methods"] else "n/a"
                 for m in ("linear_probe", "prototype", "tip_adapter")]
        table.add_row(name, zs, *cells)
    console.print(table)
    console.print(f"tip4_minus_zeroshot {fewshot['tip4_minus_zeroshot']:+.3f} (target >= 0), "
                  f"tip4_minus_linear4 {fewshot['tip4_minus_linear4']:+.3f} (target >= 0)")
    table = Table(title=f"federated, {federated['config']['clients']} clients, {federated['config']['rounds']} rounds")
    for col in ("training", "t2i R@1", "i2t R@1", "zero-shot shape", "R@1 / centralised", "seconds"):
        table.add_column(col, justify="right")
    for name, run in federated["runs"].items():
        f = run["final"]
        table.add_row(name, f"{f['t2i_R@1']:.3f}", f"{f['i2t_R@1']:.3f}", f"{f.get('zeroshot_shape', 0):.3f}",
                      f"{run['ratio_t2i_R@1']:.3f}", f"{run['seconds']:.0f}")
    console.print(table)
    console.print(f"fedavg_ratio {federated['fedavg_ratio']:.3f} (target >= 0.9)")


def run(out: Path = Path("runs/bench-paradigms"), quick: bool = False, results: Path | None = RESULTS) -> dict:
    """Both benchmarks; returns (and writes to `results`) the figures."""
    size = QUICK if quick else FULL
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    data = shapes_data(out, size["n_train"], size["n_test"])
    fewshot = fewshot_figures(data, out, size["model_steps"], size["seeds"])
    federated = federated_figures(data, size["rounds"], size["local_steps"], size["extras"])
    figures = {"tip4_minus_zeroshot": fewshot["tip4_minus_zeroshot"],
               "tip4_minus_linear4": fewshot["tip4_minus_linear4"],
               "fedavg_ratio": federated["fedavg_ratio"], "quick": quick, "size": size,
               "minutes": (time.perf_counter() - start) / 60, "fewshot": fewshot, "federated": federated}
    print_tables(fewshot, federated)
    if results is not None:
        write_json(results, figures)
        console.print(f"figures: {results}")
    return figures


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes: checks the whole run in a few minutes")
    ap.add_argument("--out", type=Path, default=Path("runs/bench-paradigms"))
    ap.add_argument("--json", type=Path, default=RESULTS)
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    run(args.out, args.quick, args.json)


if __name__ == "__main__":
    main()
