"""The `polymodal` command line (typer)."""

from __future__ import annotations

import os
import sys
import traceback
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .cli_options import parse_duration
from .errors import PolymodalError
from .utils import write_json

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="polymodal: multimodal learning toolkit (shared embedding spaces, retrieval, evaluation).")
data_app = typer.Typer(no_args_is_help=True, help="Generate, inspect and convert datasets.")
app.add_typer(data_app, name="data")
console = Console()

# The commands import what they need (torch above all) when they run, so that `polymodal --help`
# and a typo answer at once.


@app.callback()
def options(debug: bool = typer.Option(False, "--debug", envvar="POLYMODAL_DEBUG",
                                       help="On an error, also show the full traceback (or set POLYMODAL_DEBUG=1).")):
    if debug:
        os.environ["POLYMODAL_DEBUG"] = "1"  # read by main() once the command has failed


# -- data ----------------------------------------------------------------------------------------


@data_app.command("shapes")
def data_shapes(
    out: Path = typer.Argument(..., help="Directory to write (images/, manifest.jsonl, dataset.json)."),
    n: int = typer.Option(10000, "--n", help="Training images."),
    val: int = typer.Option(500, help="Validation images."),
    test: int = typer.Option(1000, help="Test images (seen colour-shape combinations)."),
    unseen: int = typer.Option(1000, help="test_unseen images (held-out colour-shape combinations)."),
    image_size: int = typer.Option(64, help="Image side in pixels."),
    captions: int = typer.Option(5, help="Captions per image."),
    prompt_captions: int = typer.Option(0, "--prompt-captions", help=(
        "Extra GenEval-style prompt captions per training image ('two circles', 'a red star left of a blue square'), "
        "so that a text-to-image model learns the phrasing it is scored on.")),
    seed: int = typer.Option(0, help="Random seed: the same seed gives the same dataset."),
    workers: int | None = typer.Option(None, help="Processes (default: all cores)."),
):
    """Generate a ShapesWorld dataset: images of 1-3 coloured shapes with captions."""
    from .data.synthetic.shapes import ShapesConfig, generate

    if min(n, val, test, unseen, prompt_captions) < 0 or image_size < 32:
        raise typer.BadParameter("counts must be >= 0 and --image-size >= 32")
    cfg = ShapesConfig(n_train=n, n_val=val, n_test=test, n_unseen=unseen, image_size=image_size,
                       captions_per_image=captions, seed=seed, prompt_captions=prompt_captions)
    generate(out, cfg, workers=workers)
    console.print(f"wrote {n + val + test + unseen} images to {out}")


@data_app.command("moving-shapes")
def data_moving_shapes(
    out: Path = typer.Argument(..., help="Directory to write (clips/, images/, manifest.jsonl, dataset.json)."),
    n: int = typer.Option(4000, "--n", min=0, help="Training clips."),
    val: int = typer.Option(200, min=0, help="Validation clips."),
    test: int = typer.Option(400, min=0, help="Test clips (seen colour-shape combinations)."),
    unseen: int = typer.Option(400, min=0, help="test_unseen clips (held-out colour-shape combinations)."),
    frames: int = typer.Option(8, min=2, max=64, help="Frames per clip."),
    image_size: int = typer.Option(32, min=32, max=256, help="Frame side in pixels."),
    captions: int = typer.Option(3, min=1, help="Captions per clip."),
    seed: int = typer.Option(0, help="Random seed: the same seed gives the same dataset."),
    workers: int | None = typer.Option(None, help="Processes (default: all cores)."),
):
    """Generate Moving ShapesWorld: captioned clips of shapes that move, stay, grow or change colour."""
    from .data.synthetic.moving_shapes import MovingShapesConfig, generate

    generate(out, MovingShapesConfig(n_train=n, n_val=val, n_test=test, n_unseen=unseen, frames=frames,
                                     image_size=image_size, captions_per_clip=captions, seed=seed), workers=workers)
    console.print(f"wrote {n + val + test + unseen} clips to {out}")


@data_app.command("info")
def data_info(
    source: Path = typer.Argument(..., help="A dataset: directory, COCO JSON, CSV/TSV, or class folder."),
    format: str = typer.Option("auto", help="manifest, coco, csv, folder, or auto."),
    images: Path | None = typer.Option(None, help="Directory the media paths are relative to."),
    strict: bool = typer.Option(False, help="Fail on the first bad record instead of skipping it."),
):
    """Load a dataset with any loader and summarise it (splits, captions, skipped records)."""
    from .data import load_records

    data = load_records(source, format=format, strict=strict, images=images)
    table = Table(title=f"{source}")
    for col in ("split", "records", "with image", "with audio", "captions"):
        table.add_column(col)
    for split, count in data.splits.items():
        recs = data.split(split).records
        table.add_row(split, str(count), str(sum(1 for r in recs if r.image)), str(sum(1 for r in recs if r.audio)),
                      str(sum(len(r.text) for r in recs)))
    console.print(table)
    console.print(data.skips.summary())


@data_app.command("convert")
def data_convert(
    source: Path = typer.Argument(..., help="COCO JSON, CSV/TSV, class folder, or the public Sort-of-CLEVR "
                                  "generator's sort-of-clevr.pickle to convert."),
    out: Path = typer.Argument(..., help="Where to write manifest.jsonl (paths point back at the media; "
                               "a Sort-of-CLEVR pickle's images are written to OUT/images)."),
    format: str = typer.Option("auto", help="manifest, coco, csv, folder, sort-of-clevr-pickle, or auto "
                               "(a .pickle / .pkl file is a Sort-of-CLEVR pickle)."),
    images: Path | None = typer.Option(None, help="Directory the media paths are relative to."),
    strict: bool = typer.Option(False, help="Fail on the first bad record instead of skipping it."),
    to: str = typer.Option("manifest", help="manifest, or webdataset: tar shards (images copied in) with an "
                           "index, OUT/shards.json, for streaming training."),
    shard_size: int = typer.Option(10000, min=1, help="Samples per tar shard (--to webdataset)."),
):
    """Write any supported dataset as a polymodal manifest (media files are not copied, except the
    images inside a Sort-of-CLEVR pickle), or as WebDataset shards."""
    import os

    from .data import load_records, write_manifest

    if format == "sort-of-clevr-pickle" or (format == "auto" and source.suffix.lower() in (".pickle", ".pkl")):
        from .data.sort_of_clevr_pickle import convert_public_pickle

        splits = convert_public_pickle(source, out)
        console.print(f"wrote {sum(splits.values())} images with their questions to {out} "
                      f"({', '.join(f'{k} {v}' for k, v in splits.items())})")
        return
    if to not in ("manifest", "webdataset"):
        raise typer.BadParameter(f"unknown output '{to}' (manifest or webdataset)")
    data = load_records(source, format=format, strict=strict, images=images)
    if to == "webdataset":
        from .data.formats.webdataset import INDEX, write_shards

        index = write_shards(data, out, shard_size)
        counts = {k: sum(s["samples"] for s in v) for k, v in index["splits"].items()}
        console.print(f"wrote {sum(len(v) for v in index['splits'].values())} shards to {out} "
                      f"({', '.join(f'{k} {v}' for k, v in counts.items())}; index {out / INDEX})")
        console.print(data.skips.summary())
        return
    out.mkdir(parents=True, exist_ok=True)
    for rec in data.records:
        for key in ("image", "audio"):
            if getattr(rec, key):
                setattr(rec, key, os.path.relpath(data.path(getattr(rec, key)), out))
    n = write_manifest(out / "manifest.jsonl", data.records)
    console.print(f"wrote {n} records to {out / 'manifest.jsonl'}")
    console.print(data.skips.summary())


# -- models, training, evaluation ----------------------------------------------------------------


@app.command("models")
def models(pattern: str = typer.Argument("*", help="Shell-style filter, e.g. 'shapes-*'.")):
    """List the architecture presets."""
    from .config import list_models

    for name in list_models(pattern):
        console.print(name)


@app.command("train")
def train_cmd(
    data: Path = typer.Argument(..., help="Training dataset (its 'train' split is used), or WebDataset shards."),
    out: Path = typer.Option(Path("runs/train"), help="Checkpoint directory to write."),
    model: str = typer.Option("shapes-cnn-small", help="Architecture preset (see `polymodal models`), JSON file, "
                              "or a pretrained model to fine-tune: hf:<id>, open_clip:<arch>/<tag>, a directory."),
    loss: str = typer.Option("clip", help="clip (symmetric InfoNCE) or siglip (sigmoid)."),
    epochs: int = typer.Option(10, min=1),
    steps: int | None = typer.Option(None, min=1, help="Optimizer steps in all, instead of --epochs: the same "
                                        "model on any machine, however fast or busy."),
    time_budget: float | None = typer.Option(None, parser=parse_duration, metavar="DURATION",
                                                help="Stop after this much training (e.g. 3m); the LR "
                                                "schedule fits it."),
    batch_size: int = typer.Option(128, min=2, help="Global batch size (split across DDP ranks)."),
    accum_steps: int = typer.Option(1, min=1, help="Gradient accumulation micro-batches."),
    lr: float | None = typer.Option(None, help="Default: 2e-3 from scratch, 1e-5 fine-tuning, 1e-3 with --lora."),
    weight_decay: float = typer.Option(0.1),
    warmup: float = typer.Option(0.05, help="Warm-up fraction of training."),
    grad_clip: float = typer.Option(1.0),
    precision: str = typer.Option("auto", help="auto, bf16 or fp32."),
    hard_negatives: int = typer.Option(3, min=0, help="NegCLIP-style counterfactual captions per image, each "
                                       "of another kind (ShapesWorld; 0: none)."),
    seed: int = typer.Option(0),
    device: str = typer.Option("auto", help="auto, cpu, cuda, cuda:1 ..."),
    eval_images: int = typer.Option(1000, help="Validation gallery size evaluated every epoch (0: none)."),
    resume: bool = typer.Option(False, help="Continue from the checkpoint in --out."),
    strict: bool = typer.Option(False, help="Fail on the first bad record instead of skipping it."),
    lora: bool = typer.Option(False, "--lora", help="Fine-tune LoRA adapters on the attention projections only."),
    lora_rank: int = typer.Option(8, min=1, help="Rank of the LoRA adapters."),
    lock_image: bool = typer.Option(False, "--lock-image", help="Freeze the image tower (LiT)."),
    lock_text: bool = typer.Option(False, "--lock-text", help="Freeze the text tower."),
    ray_workers: int = typer.Option(0, min=0, help="Train on Ray: this many TorchTrainer workers (DDP ranks) on "
                                    "the cluster in RAY_ADDRESS, or on a Ray started here (0: no Ray)."),
    ray_cpus_per_worker: int = typer.Option(1, min=1, help="CPUs Ray reserves for each worker (--ray-workers)."),
    ray_storage: str | None = typer.Option(None, help="Where Ray keeps the run and its copy of the checkpoint "
                                           "(default ~/ray_results; on several machines a shared path or s3://)."),
    init_from: list[str] | None = typer.Option(None, "--init-from", metavar="DIR", help=(
        "Start the towers of the --model preset from a checkpoint of `polymodal pretrain` (the tower it "
        "pretrained) or of `polymodal train` (both); repeat for one per tower.")),
    workers: int = typer.Option(2, min=0, help="DataLoader workers decoding WebDataset shards (streaming only)."),
    save_every: int | None = typer.Option(None, min=1, help="Also checkpoint every N steps within an epoch; "
                                          "--resume continues the epoch's stream from there."),
    sample_log: Path | None = typer.Option(None, hidden=True, help="Append each step's sample ids (JSON lines)."),
):
    """Train an aligned image-text model contrastively, or fine-tune a pretrained one. Runs under torchrun for DDP.
    DATA is a dataset directory (decoded into memory) or WebDataset shards, streamed: a directory of .tar
    shards (from `data convert --to webdataset`, or img2dataset), a brace pattern 'shards/{00000..00099}.tar'."""
    from .train.loop import TrainConfig, train

    if loss not in ("clip", "siglip"):
        raise typer.BadParameter(f"unknown loss '{loss}' (clip or siglip)")
    cfg = TrainConfig(data=str(data), out=str(out), model=model, loss=loss, epochs=epochs, steps=steps,
                      time_budget=time_budget, batch_size=batch_size, accum_steps=accum_steps,
                      lr=lr, weight_decay=weight_decay, warmup=warmup, grad_clip=grad_clip, precision=precision,
                      hard_negatives=hard_negatives, seed=seed, device=device, eval_images=eval_images,
                      resume=resume, strict=strict, lora=lora_rank if lora else 0, lock_image=lock_image,
                      lock_text=lock_text, workers=workers, save_every=save_every,
                      sample_log=str(sample_log) if sample_log else None)
    cfg.init_from = list(init_from or [])
    if ray_workers:
        from .train.ray_train import train_on_ray

        run = train_on_ray(cfg, ray_workers, ray_cpus_per_worker, ray_storage)
        console.print(f"trained by {run.world_size} Ray workers; Ray's copy of the checkpoint: {run.ray_checkpoint}")
        path = run.out
    else:
        path = train(cfg)
    console.print(f"checkpoint: {path}" + (f" (towers from {', '.join(cfg.init_from)})" if cfg.init_from else ""))


@app.command("eval")
def eval_cmd(
    checkpoint: str = typer.Argument(..., help="Checkpoint directory, or hf:<id>, open_clip:<arch>/<tag>, ..."),
    data: Path = typer.Argument(..., help="Dataset to evaluate on."),
    split: list[str] | None = typer.Option(None, help="Split(s); default test and test_unseen."),
    classes: str | None = typer.Option(None, help="Comma-separated class names for zero-shot on labelled data."),
    max_images: int | None = typer.Option(None, help="Evaluate only the first N images of each split."),
    json_out: Path | None = typer.Option(None, "--json", help="Write the metrics as JSON here."),
    strict: bool = typer.Option(False, help="Fail on the first bad record instead of skipping it."),
    report: Path | None = typer.Option(None, help="Also write an HTML report here."),
):
    """Evaluate retrieval (R@1/5/10, median rank), zero-shot accuracy and compositional probes; a
    captioner: fact precision/recall, CHAIR-i, BLEU-4, CIDEr-D and METEOR of its captions."""
    from . import load
    from .data import load_records
    from .evaluate.report import write_eval_report
    from .evaluate.run import evaluate_model, print_results

    model = load(checkpoint)
    dataset = load_records(data, strict=strict)
    names = [c.strip() for c in classes.split(",") if c.strip()] if classes else None
    captioned: dict = {}
    results = evaluate_model(model, dataset, split or None, max_images, names, captioned=captioned)
    print_results(results)
    if len(dataset.skips):
        console.print(dataset.skips.summary())
    if json_out:
        write_json(json_out, results)
        console.print(f"metrics: {json_out}")
    if report:
        console.print(f"report: {write_eval_report(report, f'{checkpoint} on {data}', results, captioned)}")


@app.command("similarity")
def similarity_cmd(
    image: Path = typer.Argument(..., help="Image file (an audio file with --audio)."),
    texts: list[str] = typer.Argument(..., help="Candidate texts."),
    model: str = typer.Option("runs/demo/model", help="Checkpoint directory, or hf:<id>, open_clip:<arch>/<tag>, ..."),
    audio: bool = typer.Option(False, "--audio", help="The first argument is an audio file (wav, flac, mp3, ogg): "
                               "zero-shot audio classification by the texts."),
):
    """Print the softmax probability of each text for IMAGE (CLIP's first example), or for an
    audio clip with --audio."""
    from . import load

    m = load(model)
    probs = (m.similarity_audio if audio else m.similarity)([image], texts, softmax=True)[0]
    table = Table()
    table.add_column("text")
    table.add_column("probability", justify="right")
    for text, p in sorted(zip(texts, probs.tolist()), key=lambda x: -x[1]):
        table.add_row(text, f"{p:.3f}")
    console.print(table)


@app.command("demo")
def demo_cmd(
    out: Path = typer.Option(Path("runs/demo"), help="Where the data, model and report go."),
    n_train: int = typer.Option(40000, help="Training images."),
    n_test: int = typer.Option(10000, help="Test gallery size."),
    steps: int | None = typer.Option(None, min=1, help="Training steps of 128 pairs (default: the demo's "
                                        "900, about 3 minutes on 2 cores): the same model on any machine."),
    model: str = typer.Option("shapes-cnn-small", help="Architecture preset."),
):
    """Generate ShapesWorld, train, evaluate, and write an HTML report."""
    from .demo import DEMO_STEPS, run_demo

    report = run_demo(out, n_train=n_train, n_test=n_test, steps=steps or DEMO_STEPS, model=model)
    console.print(f"[bold green]report:[/] {report}")


# Each feature area keeps its commands in its own module; they import their libraries lazily.
from .audio_cli import train_audio_cmd  # noqa: E402  (audio)
from .cca_cli import cca_app  # noqa: E402  (classical alignment: CCA family)
from .chat_cli import chat_cmd, chat_eval_cmd, chat_train_cmd, data_questions  # noqa: E402  (image-grounded chat)
from .cli_export import export_app, lora_app  # noqa: E402  (export onnx, lora merge)
from .diffusion_cli import generate_cmd, train_generator_cmd  # noqa: E402  (text-to-image)
from .generative_cli import caption_app  # noqa: E402  (captioning)
from .index.cli import index_app, search_cmd, serve_cmd  # noqa: E402  (the search engine)
from .lab.cli import lab_app, sort_of_clevr  # noqa: E402  (VQA fusion lab)
from .paradigms.cli import federated_cmd, fewshot_app  # noqa: E402  (few-shot, federated)
from .pretrain_cli import pretrain_cmd  # noqa: E402  (self-supervised pretraining)
from .speak_cli import data_speak  # noqa: E402  (spoken captions)
from .transcribe_cli import transcribe_cmd  # noqa: E402  (speech recognition)
from .video_cli import train_video_generator_cmd, train_video_retrieval_cmd  # noqa: E402  (video)

data_app.command("sort-of-clevr")(sort_of_clevr)
data_app.command("speak")(data_speak)
data_app.command("questions")(data_questions)
app.command("chat")(chat_cmd)
app.command("chat-train")(chat_train_cmd)
app.command("chat-eval")(chat_eval_cmd)
app.add_typer(export_app, name="export")
app.add_typer(lora_app, name="lora")
app.add_typer(index_app, name="index")
app.add_typer(lab_app, name="lab")
app.add_typer(cca_app, name="cca")
app.add_typer(fewshot_app, name="fewshot")
app.command("federated")(federated_cmd)
app.add_typer(caption_app, name="caption")
app.command("train-generator")(train_generator_cmd)
app.command("train-video-generator")(train_video_generator_cmd)
app.command("train-video-retrieval")(train_video_retrieval_cmd)
app.command("train-audio")(train_audio_cmd)
app.command("pretrain")(pretrain_cmd)
app.command("transcribe")(transcribe_cmd)
app.command("generate")(generate_cmd)
app.command("search")(search_cmd)
app.command("serve")(serve_cmd)


def main() -> None:
    """Entry point: errors become one line on stderr and exit status 2; with --debug (or
    POLYMODAL_DEBUG=1) the full traceback comes first, to find a cause such as a shape mismatch."""
    try:
        app()
    except (PolymodalError, FileNotFoundError, ValueError, RuntimeError) as err:
        if os.environ.get("POLYMODAL_DEBUG", "").lower() in ("1", "true", "yes", "on"):
            traceback.print_exc()
        Console(stderr=True).print(f"[bold red]error:[/] {escape(str(err))}", highlight=False)
        sys.exit(2)
    except KeyboardInterrupt:
        Console(stderr=True).print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
