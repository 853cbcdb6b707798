"""`polymodal train-generator | generate`: text-to-image diffusion from the command line. Libraries
(torch, diffusers) are imported when a command runs, so `polymodal --help` stays fast."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from .cli_options import parse_duration
from .video_cli import generate_video

console = Console()


def train_generator_cmd(
    data: Path = typer.Argument(..., help="Dataset with a train split of captioned images (e.g. ShapesWorld)."),
    out: Path = typer.Option(..., help="Directory for the diffusers pipeline (unet/, vae/, text_encoder/ ...)."),
    model: str = typer.Option("shapes-diffusion-small", help="Preset (shapes-diffusion-small, shapes-diffusion-tiny) "
                                                             "or a JSON config file."),
    steps: int = typer.Option(6000, min=1, help="UNet steps."),
    time_budget: float | None = typer.Option(None, parser=parse_duration, help="UNet training time (e.g. 40m); "
                                             "whichever of --steps and this ends first."),
    batch_size: int = typer.Option(32, min=1),
    lr: float = typer.Option(5e-4, min=0.0),
    caption_dropout: float = typer.Option(0.1, min=0.0, max=1.0, help="Probability of training on the empty "
                                          "prompt (what classifier-free guidance needs)."),
    vae: Path | None = typer.Option(None, help="Reuse the autoencoder of this pipeline directory (skips stage 1)."),
    vae_steps: int = typer.Option(4000, min=1, help="Autoencoder steps (of 8 images)."),
    vae_time_budget: float | None = typer.Option(None, parser=parse_duration, help="Autoencoder training time."),
    seed: int = typer.Option(0),
    device: str = typer.Option("auto", help="auto, cpu, cuda ..."),
):
    """Train a text-to-image latent diffusion model (autoencoder, then a text-conditioned UNet) on DATA."""
    from .train.generator import GeneratorTrainConfig, train_generator

    result = train_generator(GeneratorTrainConfig(
        data=str(data), out=str(out), model=model, steps=steps, time_budget=time_budget, batch_size=batch_size,
        lr=lr, caption_dropout=caption_dropout, vae=str(vae) if vae else None, vae_steps=vae_steps,
        vae_time_budget=vae_time_budget, seed=seed, device=device))
    console.print(f"trained the UNet {result['steps']} steps in {result['seconds']} s "
                  f"({result['train_samples_per_s']} samples/s, loss {result['loss']:.4f}); pipeline: {out}")


def generate_cmd(
    prompts: list[str] = typer.Argument(..., help="One or more prompts, e.g. 'a red circle left of a blue square'."),
    model: str = typer.Option(..., help="A diffusers text-to-image pipeline directory (from `polymodal "
                                        "train-generator`, or a local Stable Diffusion)."),
    n: int = typer.Option(4, min=1, help="Images per prompt."),
    steps: int = typer.Option(25, min=1, max=1000, help="Denoising steps."),
    guidance: float = typer.Option(3.0, min=0.0, help="Classifier-free guidance scale (<= 1: none)."),
    scheduler: str = typer.Option("dpm++", help="ddpm, ddim, dpm++ (DPM-Solver++) or euler."),
    seed: int = typer.Option(0),
    size: int | None = typer.Option(None, help="Image side in pixels (default: the model's)."),
    video: bool = typer.Option(False, "--video", help="A text-to-video model: write the clips as one animated GIF."),
    out: Path | None = typer.Option(None, help="Where to write the grid, a row per prompt (default: generated.png, "
                                               "or generated.gif with --video)."),
):
    """Generate images (or, with --video, clips) from PROMPTS and write them as one grid."""
    from .backends import load_model
    from .errors import CheckpointError
    from .models.generative.diffusion import write_grid
    if video:
        generate_video(model, prompts, n=n, steps=steps, guidance=guidance, scheduler=scheduler, seed=seed,
                       out=out or Path("generated.gif"))
        return
    out = out or Path("generated.png")
    generator = load_model(model)
    if not hasattr(generator, "generate"):
        raise CheckpointError(f"{model}: not a text-to-image model (train one with `polymodal train-generator`)")
    if hasattr(generator, "frames"):
        raise CheckpointError(f"{model}: a text-to-video model: add --video to write its clips as a GIF")
    images = generator.generate(prompts, n=n, steps=steps, guidance=guidance, seed=seed, scheduler=scheduler,
                                size=size, progress=True)
    write_grid(images, columns=n, path=out)
    console.print(f"wrote {len(images)} images ({len(prompts)} prompts x {n}) to {out}")
