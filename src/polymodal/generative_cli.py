"""`polymodal caption train | run | eval | baseline`: the captioner from the command line. Libraries (torch
above all) are imported when a command runs, so `polymodal --help` stays fast."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

console = Console()
errors = Console(stderr=True)
caption_app = typer.Typer(no_args_is_help=True, help="Caption images: train a captioner, run it, score it "
                          "(and the nearest-neighbour baseline).")


@caption_app.command("train")
def caption_train(
    data: Path = typer.Argument(..., help="Dataset with a train split of images and captions (e.g. ShapesWorld)."),
    out: Path = typer.Option(..., help="Directory for the checkpoint (config.json, model.safetensors, tokenizer)."),
    steps: int = typer.Option(2000, min=1, help="Optimizer steps."),
    batch_size: int = typer.Option(64, min=1),
    lr: float = typer.Option(2e-3),
    model: str = typer.Option("shapes-captioner-small", help="Preset (shapes-captioner-small, "
                                                            "shapes-captioner-tiny) or a JSON config file."),
    seed: int = typer.Option(0),
    device: str = typer.Option("auto", help="auto, cpu, cuda ..."),
    contrastive: bool = typer.Option(False, "--contrastive", help="CoCa joint training: an aligned model shares "
                                     "the image tower (contrastive loss + weight x captioning loss); its "
                                     "checkpoint is written to OUT/aligned."),
    caption_weight: float = typer.Option(1.0, min=0.0, help="With --contrastive: the captioning loss's weight "
                                         "(0: contrastive only)."),
    aligned_model: str = typer.Option("shapes-cnn-small", help="With --contrastive: the aligned preset (its image "
                                      "tower replaces the captioner preset's)."),
):
    """Train a CoCa-style captioner (image tower + cross-attending text decoder) on DATA's captions."""
    from .train.captioner import CaptionTrainConfig, train_captioner

    result = train_captioner(CaptionTrainConfig(
        data=str(data), out=str(out), model=model, steps=steps, batch_size=batch_size, lr=lr, seed=seed,
        device=device, contrastive=contrastive, caption_weight=caption_weight, aligned_model=aligned_model))
    terms = "".join(f", {k.replace('_', ' ')} {result[k]:.3f}" for k in ("contrastive_loss", "caption_loss")
                    if k in result)
    console.print(f"trained {result['steps']} steps in {result['seconds']} s (loss {result['loss']:.3f}{terms}); "
                  f"checkpoint: {out}" + (f" (aligned half: {out / 'aligned'})" if contrastive else ""))


@caption_app.command("run")
def caption_run(
    images: list[Path] = typer.Argument(..., help="Image files."),
    model: str = typer.Option(..., help="Captioner: a checkpoint directory (from `polymodal caption train`), "
                                        "hf:<repo id> or a Hugging Face captioning/chat model directory."),
    json_out: bool = typer.Option(False, "--json", help="Print JSON lines {image, caption} instead of a table."),
    beam: int = typer.Option(1, min=1, help="Beam width (1: greedy)."),
    max_tokens: int = typer.Option(40, min=1, help="Longest caption in tokens."),
):
    """Caption IMAGES; an unreadable file is skipped with one line saying why."""
    from .backends import load_model
    from .data.schema import DataError, UnreadableFileError
    from .modalities.image_files import load_image
    from .models.generative.decoding import GenerationConfig

    captioner = load_model(model)
    if not hasattr(captioner, "caption"):
        raise DataError(f"{model}: not a captioning model (an aligned model embeds, it does not write captions)")
    readable, pictures = [], []
    for path in images:
        try:
            pictures.append(load_image(path))
            readable.append(path)
        except UnreadableFileError as err:
            errors.print(f"skipped {err}", highlight=False, markup=False)
    if not readable:
        raise DataError("no readable image to caption")
    captions = captioner.caption(pictures, GenerationConfig(max_new_tokens=max_tokens, num_beams=beam))
    if json_out:
        for path, caption in zip(readable, captions):
            print(json.dumps({"image": str(path), "caption": caption}))
        return
    table = Table()
    table.add_column("image")
    table.add_column("caption")
    for path, caption in zip(readable, captions):
        table.add_row(str(path), caption)
    console.print(table)


@caption_app.command("eval")
def caption_eval(
    data: Path = typer.Argument(..., help="Dataset with test/test_unseen images and their scenes (ShapesWorld) "
                                          "or reference captions."),
    model: str = typer.Option(..., help="Captioner: a checkpoint directory, hf:<repo id> or a Hugging Face "
                                        "captioning model directory."),
    limit: int | None = typer.Option(None, min=1, help="Score only the first N images of each split."),
    meteor: bool = typer.Option(True, help="Score METEOR (starts a Java process: about 10 s more)."),
    json_out: Path | None = typer.Option(None, "--json", help="Also write the figures as JSON here."),
):
    """Fact precision, fact recall, CHAIR-i, BLEU-4, CIDEr-D and METEOR of greedy captions on the
    test and test_unseen splits."""
    from .backends import load_model
    from .data import DataError, load_records
    from .evaluate.captioning import evaluate_captioner

    captioner = load_model(model)
    if not hasattr(captioner, "caption"):
        raise DataError(f"{model}: not a captioning model (an aligned model embeds, it does not write captions)")
    results = evaluate_captioner(captioner, load_records(data), limit=limit, meteor=meteor)
    _report_scores(f"{model} on {data}", data, results, json_out)


@caption_app.command("baseline")
def caption_baseline(
    data: Path = typer.Argument(..., help="Dataset with a train split of captioned images and test splits to score."),
    aligned: str = typer.Option(..., help="Aligned model (a `polymodal train` checkpoint, hf:<id>, ...) whose "
                                          "image space finds the nearest training image."),
    limit: int | None = typer.Option(None, min=1, help="Score only the first N images of each split."),
    meteor: bool = typer.Option(True, help="Score METEOR (starts a Java process: about 10 s more)."),
    json_out: Path | None = typer.Option(None, "--json", help="Also write the figures as JSON here."),
):
    """Nearest-neighbour captioning: each test image gets the caption of its nearest training image
    in ALIGNED's space, scored as `caption eval` scores a captioner."""
    from . import load
    from .data import DataError, load_records
    from .evaluate.captioning import evaluate_captioner
    from .evaluate.nn_captioning import NearestNeighbourCaptioner

    records = load_records(data)
    if not records.split("train").records:
        raise DataError(f"{data}: no train split to take captions from")
    baseline = NearestNeighbourCaptioner(load(aligned), records.split("train"), progress=True)
    results = evaluate_captioner(baseline, records, limit=limit, meteor=meteor)
    _report_scores(f"nearest-neighbour captions ({aligned}) on {data}", data, results, json_out)


def _report_scores(title: str, data: Path, results: dict, json_out: Path | None) -> None:
    """The table of `caption eval` and `caption baseline`."""
    from .data import DataError
    from .evaluate.captioning import CAPTION_COLUMNS, caption_rows
    from .utils import write_json

    if not results:
        raise DataError(f"{data}: no test or test_unseen images with a scene or reference captions to score")
    table = Table(title=title)
    for column in ("split", "captions", *CAPTION_COLUMNS, "unparsed spans"):
        table.add_column(column)
    for row in caption_rows(results):
        table.add_row(*row)
    console.print(table)
    if json_out:
        write_json(json_out, results)
        console.print(f"metrics: {json_out}")
