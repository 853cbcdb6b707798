"""`polymodal data sort-of-clevr`, `polymodal lab vqa [explain]` and `polymodal lab paradigms`."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from ..cli_options import parse_duration

console = Console()
lab_app = typer.Typer(no_args_is_help=True,
                      help="Experiments that train, compare and report (VQA fusion, learning paradigms).")
vqa_app = typer.Typer(invoke_without_command=True, help="VQA fusion lab on Sort-of-CLEVR.")
lab_app.add_typer(vqa_app, name="vqa")


def sort_of_clevr(
    out: Path = typer.Argument(..., help="Directory to write (images/, manifest.jsonl, dataset.json)."),
    n: int = typer.Option(9800, "--n", help="Training images (the paper: 9,800)."),
    val: int = typer.Option(200, help="Validation images."),
    test: int = typer.Option(200, help="Test images (the paper: 200)."),
    seed: int = typer.Option(0, help="Random seed: the same seed gives the same dataset."),
    render: str = typer.Option("mixed", help="How images are drawn: mixed (each image a random variant: pil, "
                               "pil-jitter, pil-aa, opencv), pil (the exact renderer, no jitter), heldout "
                               "(opencv-aa, never in mixed), or variant names joined by commas."),
    heldout: int = typer.Option(0, "--heldout", min=0, help="Images of split test_heldout, drawn only with "
                                "the held-out variants (opencv-aa)."),
    ternary: bool = typer.Option(False, "--ternary/--no-ternary", help="Also 10 ternary questions per image "
                                 "(between, on the line, obtuse triangle; two colours each)."),
):
    """Generate Sort-of-CLEVR: 75x75 images of 6 coloured squares/circles, 10 relational and 10
    non-relational questions per image (text + the paper's 11-number encoding), 10 ternary ones
    with --ternary; each image drawn with a random rendering variant (--render)."""
    from ..data.synthetic.sort_of_clevr import SortOfClevrConfig, generate

    if min(n, val, test) < 0 or n + test == 0:
        raise typer.BadParameter("counts must be >= 0")
    try:  # generate checks --render (and --heldout against it) before it writes anything
        generate(out, SortOfClevrConfig(n_train=n, n_val=val, n_test=test, seed=seed, render=render,
                                        n_heldout=heldout, ternary=ternary))
    except ValueError as err:
        raise typer.BadParameter(str(err), param_hint="--render") from None
    console.print(f"wrote {n + val + test + heldout} images with {30 if ternary else 20} questions each to {out}")


@vqa_app.callback()
def vqa(
    ctx: typer.Context,
    data: Path = typer.Option(Path("data/sort-of-clevr"), help="VQA dataset; generated (Sort-of-CLEVR) if missing."),
    model: list[str] | None = typer.Option(None, help="late, early, film, xattn or rn (repeatable)."),
    all_models: bool = typer.Option(False, "--all", help="Every fusion model."),
    out: Path = typer.Option(Path("runs/lab-vqa"), help="Where checkpoints, results.* and report.html go."),
    time_budget: float = typer.Option("5m", parser=parse_duration, metavar="DURATION",
                                      help="Training time per model (e.g. 90s, 5m, 30m)."),
    epochs: int | None = typer.Option(None, min=1, help="Train each model this many epochs instead of "
                                      "--time-budget: the same model on any machine, however busy."),
    modality_dropout: float = typer.Option(0.0, min=0.0, max=1.0,
                                           help="Also train each model with this modality dropout and compare."),
    baselines: bool = typer.Option(True, help="Question-only and image-only baselines."),
    batch_images: int = typer.Option(8, min=1, help="Images per step (each with all its questions)."),
    lr: float | None = typer.Option(None, help="Peak learning rate (default: each model's preset's own)."),
    seed: int = typer.Option(0),
    device: str = typer.Option("auto"),
    threads: int | None = typer.Option(None, min=1, help="Torch CPU threads (on a busy shared machine 1 can be "
                                                           "several times faster than 2)."),
):
    """Train fusion models, evaluate per question type and with a missing modality, write a report."""
    if ctx.invoked_subcommand is not None:
        return
    from .vqa import MODELS, LabConfig, run_lab

    if threads:
        import torch

        torch.set_num_threads(threads)
    models = list(MODELS) if all_models else list(model or [])
    if not models:
        raise typer.BadParameter("give --model (late, early, film, xattn, rn) or --all")
    if not data.exists():
        from ..data.synthetic.sort_of_clevr import SortOfClevrConfig, generate

        console.print(f"{data} does not exist: generating Sort-of-CLEVR there")
        generate(data, SortOfClevrConfig())
    cfg = LabConfig(data=str(data), out=str(out), models=models, time_budget=time_budget, epochs=epochs,
                    modality_dropout=modality_dropout, baselines=baselines, batch_images=batch_images, lr=lr,
                    seed=seed, device=device)
    run_lab(cfg)
    console.print((out / "results.md").read_text())
    console.print(f"[bold green]report:[/] {out / 'report.html'}")


@vqa_app.command("explain")
def explain_cmd(
    checkpoint: Path = typer.Argument(..., help="A VQA checkpoint (e.g. runs/lab-vqa/xattn)."),
    image: Path = typer.Argument(..., help="Image file."),
    question: str = typer.Argument(..., help="e.g. 'what is the shape of the object closest to the red object?'"),
    out: Path = typer.Option(Path("attention.png"), help="PNG to write."),
):
    """Answer a question about an image and write the attention over the image as a heat map."""
    from ..models.fusion import load_vqa
    from .explain import explain

    result = explain(load_vqa(checkpoint), image, question, out)
    console.print(f"answer: [bold]{result['answer']}[/] ({result['probability']:.0%}); heat map: {out}")


@lab_app.command("paradigms")
def paradigms_cmd(
    out: Path = typer.Option(Path("runs/lab-paradigms"), help="Where models, results.* and report.html go."),
    data: Path | None = typer.Option(None, help="A ShapesWorld dataset (train, test, test_unseen); default: "
                                     "generated under --out."),
    budget: float = typer.Option("90s", parser=parse_duration, metavar="DURATION",
                                 help="Training time of each aligned model, pretraining included (e.g. 90s, 3m)."),
    section: list[str] | None = typer.Option(None, help="Run only these sections (repeatable): alignment, cca, "
                                             "federated, fewshot, digits."),
    quick: bool = typer.Option(False, "--quick", help="Small sizes: checks every section in a few minutes."),
    seed: int = typer.Option(0),
    threads: int | None = typer.Option(None, min=1, help="Torch CPU threads."),
):
    """Contrastive, self-supervised + contrastive, the CCA family, federated and few-shot learning
    on the same ShapesWorld splits (and two-view digits): one table, plots, results.json."""
    from .paradigms import SECTIONS, ParadigmsConfig, run_paradigms

    if threads:
        import torch

        torch.set_num_threads(threads)
    if data is not None and not (data / "manifest.jsonl").exists():
        raise typer.BadParameter(f"{data}: not a dataset directory (no manifest.jsonl)", param_hint="--data")
    options = {"out": str(out), "data": str(data) if data else None, "budget": budget, "seed": seed,
               "sections": list(section or SECTIONS)}
    cfg = ParadigmsConfig.quick(**options) if quick else ParadigmsConfig(**options)
    results = run_paradigms(cfg)
    console.print((out / "results.md").read_text())
    console.print(f"[bold green]{results['lab_minutes']:.1f} minutes; report:[/] {out / 'report.html'}")
