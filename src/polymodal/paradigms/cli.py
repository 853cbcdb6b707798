"""`polymodal fewshot shapes|digits` and `polymodal federated`."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from ..utils import progress_bar, write_json

console = Console()
fewshot_app = typer.Typer(no_args_is_help=True, help="Few-shot adaptation on frozen embeddings: linear probe, "
                          "nearest prototype and Tip-Adapter, as learning curves against zero-shot.")


def _shots(text: str) -> list[int]:
    try:
        shots = sorted({int(s) for s in text.split(",") if s.strip()})
    except ValueError:
        raise typer.BadParameter(f"'{text}': comma-separated shot counts such as 1,2,4,8,16") from None
    if not shots or shots[0] < 1:
        raise typer.BadParameter(f"'{text}': shot counts must be >= 1")
    return shots


def _curves(tasks, shots: list[int], seeds: int) -> list[dict]:
    from .fewshot import learning_curve

    out = []
    with progress_bar() as bar:
        job = bar.add_task("few-shot curves", total=len(tasks) * len(shots) * seeds)
        for task in tasks:
            out.append(learning_curve(task, shots, range(seeds), progress=lambda: bar.advance(job)))
    return out


def print_curves(results: list[dict]) -> None:
    for res in results:
        shots = list(next(iter(res["methods"].values())))
        table = Table(title=f"{res['task']}: accuracy, mean ± std over seeds (chance {res['chance']:.3f}, "
                      f"{res['n_test']} test images)")
        table.add_column("method")
        for k in shots:
            table.add_column(f"{k}-shot", justify="right")
        if res["zero_shot"] is not None:
            table.add_row("zero-shot", *[f"{res['zero_shot']:.3f}"] * len(shots))
        for name, curve in res["methods"].items():
            table.add_row(name, *[f"{curve[k]['mean']:.3f} ± {curve[k]['std']:.3f}" for k in shots])
        console.print(table)


@fewshot_app.command("shapes")
def fewshot_shapes(
    model: str = typer.Argument(..., help="Aligned model: checkpoint directory, hf:<id>, open_clip:..."),
    data: Path = typer.Argument(..., help="ShapesWorld dataset (one-object images are classified)."),
    attribute: list[str] = typer.Option(["shape", "colour"], help="Attribute(s) to classify: shape, colour, size."),
    shots: str = typer.Option("1,2,4,8,16", help="Shots per class, comma-separated."),
    seeds: int = typer.Option(5, min=1, help="Support sets drawn per shot count."),
    pool_split: str = typer.Option("train", help="Split the shots are drawn from."),
    test_split: str = typer.Option("test", help="Split that is scored."),
    json_out: Path | None = typer.Option(None, "--json", help="Write the curves as JSON here."),
):
    """Learning curves on ShapesWorld attributes from a model's image embeddings, against its zero-shot classifier."""
    from .. import load
    from ..data import load_records
    from .fewshot import shapes_attribute_task

    counts = _shots(shots)
    m, dataset = load(model), load_records(data)
    tasks = [shapes_attribute_task(m, dataset, a, pool_split, test_split) for a in attribute]
    results = _curves(tasks, counts, seeds)
    print_curves(results)
    if json_out:
        write_json(json_out, {"model": model, "data": str(data), "curves": results})
        console.print(f"curves: {json_out}")


@fewshot_app.command("digits")
def fewshot_digits(
    shots: str = typer.Option("1,2,4,8,16", help="Shots per class, comma-separated."),
    seeds: int = typer.Option(5, min=1, help="Support sets drawn per shot count."),
    json_out: Path | None = typer.Option(None, "--json", help="Write the curves as JSON here."),
):
    """Learning curves on scikit-learn's bundled digits (pixels; no text, so no zero-shot)."""
    from .fewshot import digits_task

    results = _curves([digits_task()], _shots(shots), seeds)
    print_curves(results)
    if json_out:
        write_json(json_out, {"data": "sklearn digits", "curves": results})
        console.print(f"curves: {json_out}")


def federated_cmd(
    data: Path = typer.Argument(..., help="Image-caption dataset: its train split is shared out, test scores."),
    strategy: str = typer.Option("fedavg", help="Flower strategy: fedavg, fedprox, fedavgm or fedadam."),
    model: str = typer.Option("shapes-cnn-tiny", help="Architecture preset of the aligned model."),
    clients: int = typer.Option(8, min=1),
    rounds: int = typer.Option(10, min=1),
    local_steps: int = typer.Option(10, min=1, help="Optimizer steps per client per round."),
    batch_size: int = typer.Option(64, min=2),
    lr: float = typer.Option(2e-3),
    mu: float = typer.Option(0.01, min=0.0, help="FedProx's proximal weight."),
    partition: str = typer.Option("label-skew", help="iid, or label-skew (each client about two classes)."),
    modalities: str = typer.Option("pairs", help="Client modality mix, cycled over clients: e.g. pairs,image,text."),
    train_limit: int | None = typer.Option(None, min=1, help="Use only the first N training items."),
    test_limit: int = typer.Option(1000, min=1, help="Test images scored."),
    centralised: bool = typer.Option(True, help="Also train centrally on the same data at equal rounds."),
    seed: int = typer.Option(0),
    json_out: Path | None = typer.Option(None, "--json", help="Write the histories and metrics as JSON here."),
):
    """Federated training of an aligned model on Flower's simulation engine against centralised training."""
    from .federated_shapes import FederatedConfig, run_federated

    if partition not in ("iid", "label-skew"):
        raise typer.BadParameter(f"unknown partition '{partition}' (iid or label-skew)")
    cfg = FederatedConfig(str(data), model, strategy, clients, rounds, local_steps, batch_size, lr, mu, partition,
                          modalities=modalities, train_limit=train_limit, test_limit=test_limit, seed=seed)
    res = run_federated(cfg, centralised)
    table = Table(title=f"{strategy}, {clients} clients ({partition}, {modalities}), {rounds} rounds")
    for col in ("training", "t2i R@1", "i2t R@1", "zero-shot shape", "zero-shot colour", "seconds"):
        table.add_column(col, justify="right")
    for name in ("federated", "centralised"):
        if name in res:
            f = res[name]["final"]
            table.add_row(name, *[f"{f.get(k, float('nan')):.3f}" for k in ("t2i_R@1", "i2t_R@1", "zeroshot_shape",
                                                                              "zeroshot_colour")],
                          f"{res[name]['seconds']:.0f}")
    console.print(table)
    if "ratio_t2i_R@1" in res:
        console.print(f"federated / centralised R@1: text->image {res['ratio_t2i_R@1']:.3f}, "
                      f"image->text {res['ratio_i2t_R@1']:.3f}")
    if json_out:
        write_json(json_out, res)
        console.print(f"results: {json_out}")
