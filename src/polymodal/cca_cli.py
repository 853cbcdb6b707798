"""`polymodal cca fit`: classical alignment (linear, kernel or deep CCA) between image and caption
features of a dataset; the model directory it writes works with `polymodal eval` and
`polymodal index build` like any aligned model. Libraries are imported when the command runs."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

console = Console()
cca_app = typer.Typer(no_args_is_help=True, help="Classical alignment: linear, kernel and deep CCA.")


@cca_app.command("fit")
def fit_cmd(
    data: Path = typer.Argument(..., help="Dataset directory (manifest.jsonl, or any format `data convert` reads)."),
    out: Path = typer.Argument(..., help="Model directory to write."),
    method: str = typer.Option("linear", help="linear (regularised CCA), kernel (Nystroem RBF features, then "
                               "CCA) or deep (two MLP towers trained on the CCA objective)."),
    image_features: str = typer.Option("hog+color", help="pixels, hog, color, tower:DIR (a trained model's "
                                       "image embeddings) or tower-pooled:DIR (before projection); join with +."),
    text_features: str = typer.Option("tfidf", help="tfidf, minilm (bundled sentence encoder), tower:DIR or "
                                      "tower-pooled:DIR; join with +."),
    dim: int = typer.Option(32, min=1, help="Canonical dimensions: the embedding size."),
    reg: float = typer.Option(0.1, min=0.0, max=1.0, help="Ridge: each view's covariance shrunk towards the "
                              "identity (0: classical CCA, 1: PLS)."),
    landmarks: int = typer.Option(1000, min=2, help="Kernel: Nystroem landmarks per view."),
    steps: int = typer.Option(1000, min=1, help="Deep: optimizer steps."),
    batch_size: int = typer.Option(1024, min=4, help="Deep: pairs per step."),
    image_size: int = typer.Option(64, min=8, help="Image side in pixels the features read."),
    split: str = typer.Option("train", help="Split to fit on."),
    max_pairs: int | None = typer.Option(None, min=2, help="Fit on a random subset of this many pairs."),
    weight_power: float = typer.Option(1.0, min=0.0, help="Canonical dimensions weighted by correlation**power."),
    strict: bool = typer.Option(False, help="Fail on the first bad record instead of skipping it."),
    seed: int = typer.Option(0),
    device: str = typer.Option("auto", help="Deep: auto, cpu, cuda ..."),
):
    """Fit a CCA between DATA's images and captions and save it to OUT."""
    from .train.cca import CCAFitConfig, fit_cca

    report = fit_cca(CCAFitConfig(
        data=str(data), out=str(out), method=method, image_features=image_features, text_features=text_features,
        dim=dim, reg=reg, landmarks=landmarks, steps=steps, batch_size=batch_size, image_size=image_size,
        split=split, max_pairs=max_pairs, weight_power=weight_power, strict=strict, seed=seed, device=device))
    corr = report.encoder.estimator.correlations_
    table = Table(title=f"{method} CCA: canonical correlations on the training pairs")
    for col in ("pairs", "images", "features (image, text)", "fit s", "top 1", "top 5 mean", f"all {len(corr)} mean"):
        table.add_column(col, justify="right")
    table.add_row(str(report.pairs), str(report.images), f"{report.feature_dims[0]}, {report.feature_dims[1]}",
                  f"{report.fit_seconds:.1f}", f"{corr[0]:.3f}", f"{corr[:5].mean():.3f}", f"{corr.mean():.3f}")
    console.print(table)
    if len(report.data.skips):
        console.print(report.data.skips.summary())
    console.print(f"model: {out}  (evaluate: polymodal eval {out} {data}; index: polymodal index build SOURCE "
                  f"INDEX --model {out})", highlight=False)
