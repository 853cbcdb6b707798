"""`polymodal pretrain`: self-supervised pretraining of one tower (SimCLR, MAE, masked language
modelling), to start `polymodal train --init-from` from."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console

from .cli_options import parse_duration

console = Console()

# What each objective's figures mean, for the summary line (figure: (label, baseline figure, its label)).
FIGURES = {"simclr": ("view_top1", "two views of an image matched among 256", None, None),
           "mae": ("masked_mse", "masked-patch error", "mean_baseline_mse", "predicting the mean patch"),
           "mlm": ("masked_accuracy", "masked-token accuracy", "majority_rate", "the most frequent token")}


def pretrain_cmd(
    data: Path = typer.Argument(..., help="Dataset (its 'train' split is used; 'val', where present, is measured)."),
    objective: str = typer.Option(..., help="simclr (image tower: two augmented views, NT-Xent), mae (a ViT "
                                  "image tower: reconstruct masked patches) or mlm (a scratch text tower: "
                                  "predict masked tokens)."),
    model: str = typer.Option("shapes-vit-tiny", help="Architecture preset (or JSON file); align later with the "
                              "same one: polymodal train --model PRESET --init-from OUT."),
    out: Path = typer.Option(Path("runs/pretrain"), help="Checkpoint directory to write."),
    steps: int | None = typer.Option(None, min=1, help="Optimizer steps (default 500 without --time-budget)."),
    time_budget: float | None = typer.Option(None, parser=parse_duration, metavar="DURATION",
                                             help="Stop after this much training (e.g. 3m); the LR schedule fits it."),
    batch_size: int = typer.Option(128, min=2),
    lr: float | None = typer.Option(None, help="Default: 1e-3 simclr, 1.5e-3 mae, 2e-3 mlm."),
    temperature: float = typer.Option(0.2, min=1e-3, help="simclr: NT-Xent temperature."),
    mask_ratio: float = typer.Option(0.75, help="mae: fraction of patches hidden."),
    mask_prob: float = typer.Option(0.15, help="mlm: fraction of word tokens predicted."),
    precision: str = typer.Option("auto", help="auto, bf16 or fp32."),
    seed: int = typer.Option(0),
    device: str = typer.Option("auto", help="auto, cpu, cuda, cuda:1 ..."),
    strict: bool = typer.Option(False, help="Fail on the first bad record instead of skipping it."),
):
    """Pretrain one tower self-supervised; writes a checkpoint that `polymodal train --init-from` aligns."""
    from .train.pretrain import PretrainConfig, pretrain

    cfg = PretrainConfig(data=str(data), out=str(out), objective=objective, model=model, steps=steps,
                         time_budget=time_budget, batch_size=batch_size, lr=lr, precision=precision,
                         temperature=temperature, mask_ratio=mask_ratio, mask_prob=mask_prob, seed=seed,
                         device=device, strict=strict)
    path = pretrain(cfg)
    meta = json.loads((path / "config.json").read_text())["pretraining"]
    figures = summary(objective, meta["figures"])
    console.print(f"{objective}: {meta['step']} steps in {meta['seconds']:.0f} s; {figures}")
    console.print(f"checkpoint: {path} (align it: polymodal train DATA --model {model} --init-from {path})")


def summary(objective: str, figures: dict) -> str:
    """One sentence: the objective's figure on held-out samples before and after, beside its baseline."""
    key, label, base_key, base_label = FIGURES[objective]
    before, after = figures["before"][key], figures["after"][key]
    text = f"{label} {before:.3f} -> {after:.3f}"
    if objective == "simclr":
        a = figures["after"]
        text += f" (cosine, same image {a['positive_cosine']:.3f}, different images {a['negative_cosine']:.3f})"
    if base_key:
        text += f" ({base_label}: {figures['after'][base_key]:.3f})"
    return text
