"""`polymodal train-video-generator | generate --video`: text-to-video diffusion from the command line.
Libraries (torch, diffusers) are imported when a command runs, so `polymodal --help` stays fast."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from .cli_options import parse_duration

console = Console()


def train_video_generator_cmd(
    data: Path = typer.Argument(..., help="Dataset with a train split of captioned clips (e.g. Moving-ShapesWorld)."),
    out: Path = typer.Option(..., help="Directory for the diffusers pipeline (unet/, vae/, text_encoder/ ...)."),
    model: str = typer.Option("moving-shapes-video-small", help="Preset (moving-shapes-video-small, -shared, -tiny) "
                                                                "or a JSON config file."),
    steps: int = typer.Option(6000, min=1, help="UNet steps."),
    time_budget: float | None = typer.Option(None, parser=parse_duration, help="UNet training time (e.g. 40m); "
                                             "whichever of --steps and this ends first."),
    batch_size: int = typer.Option(16, min=1, help="Clips a step."),
    lr: float = typer.Option(5e-4, min=0.0),
    caption_dropout: float = typer.Option(0.1, min=0.0, max=1.0, help="Probability of training on the empty "
                                          "prompt (what classifier-free guidance needs)."),
    vae: Path | None = typer.Option(None, help="Reuse the autoencoder of this pipeline directory, image or video "
                                               "(skips stage 1)."),
    spatial_from: Path | None = typer.Option(None, help="A text-to-image pipeline whose UNet initialises the spatial "
                                                        "layers (with --model moving-shapes-video-shared for one "
                                                        "from shapes-diffusion-small)."),
    vae_steps: int = typer.Option(4000, min=1, help="Autoencoder steps (of 8 frames)."),
    vae_time_budget: float | None = typer.Option(None, parser=parse_duration, help="Autoencoder training time."),
    seed: int = typer.Option(0),
    device: str = typer.Option("auto", help="auto, cpu, cuda ..."),
):
    """Train a text-to-video latent diffusion model (a frame autoencoder, then a text-conditioned
    space-time UNet) on the clips of DATA."""
    from .train.video_generator import VideoTrainConfig, train_video_generator

    result = train_video_generator(VideoTrainConfig(
        data=str(data), out=str(out), model=model, steps=steps, time_budget=time_budget, batch_size=batch_size,
        lr=lr, caption_dropout=caption_dropout, vae=str(vae) if vae else None,
        spatial_from=str(spatial_from) if spatial_from else None, vae_steps=vae_steps,
        vae_time_budget=vae_time_budget, seed=seed, device=device))
    console.print(f"trained the video UNet {result['steps']} steps in {result['seconds']} s on {result['clips']} "
                  f"clips ({result['train_clips_per_s']} clips/s, loss {result['loss']:.4f}); pipeline: {out}")


def generate_video(model: str | Path, prompts: list[str], n: int = 4, steps: int = 25, guidance: float = 3.0,
                   scheduler: str = "dpm++", seed: int = 0, frames: int | None = None,
                   out: str | Path = "generated.gif", fps: float = 4.0) -> Path:
    """`generate --video`: `n` clips per prompt from a text-to-video pipeline directory, written as
    ONE animated GIF of clip grids (a row per prompt); returns the path."""
    from .models.generative.video_diffusion import load_text_to_video, write_video_grid

    if Path(out).suffix.lower() != ".gif":  # before minutes of sampling, not after
        raise ValueError(f"{out}: clips are written as an animated GIF (use .gif, not {Path(out).suffix!r})")
    generator = load_text_to_video(model)
    clips = generator.generate(prompts, n=n, steps=steps, guidance=guidance, seed=seed, scheduler=scheduler,
                               frames=frames, progress=True)
    write_video_grid(clips, columns=n, path=out, fps=fps)
    console.print(f"wrote {len(clips)} clips of {len(clips[0])} frames ({len(prompts)} prompts x {n}) to {out}")
    return Path(out)


def train_video_retrieval_cmd(
    data: Path = typer.Argument(..., help="Captioned clips with train and test splits (Moving ShapesWorld)."),
    out: Path = typer.Option(..., help="Directory for the model (aligned/, temporal.safetensors, config.json)."),
    model: str = typer.Option("shapes-cnn-small", help="Aligned architecture preset (its image tower reads frames)."),
    temporal: str = typer.Option("attention", help="attention (frames attend to each other) or mean (order-blind)."),
    image_size: int = typer.Option(32, min=16, max=512, help="Frame side the image tower reads."),
    steps: int = typer.Option(1500, min=1),
    time_budget: float | None = typer.Option(None, parser=parse_duration, help="Training time (e.g. 10m)."),
    batch_size: int = typer.Option(64, min=2, help="Clips a step."),
    lr: float = typer.Option(1e-3, min=0.0),
    seed: int = typer.Option(0),
):
    """Train text <-> video retrieval (an aligned model's image tower on every frame, then temporal
    attention) and print R@1 on the test clips beside text -> first frame."""
    from .train.video_retrieval import VideoRetrievalConfig, train_video_retrieval

    result = train_video_retrieval(VideoRetrievalConfig(
        data=str(data), out=str(out), model=model, temporal=temporal, image_size=image_size, steps=steps,
        time_budget=time_budget, batch_size=batch_size, lr=lr, seed=seed))
    console.print(f"trained {result['steps']} steps in {result['seconds']} s on {result['clips']} clips; on "
                  f"{result['test_clips']} test clips R@1 text->video {result['text_to_video_r1']:.3f}, video->text "
                  f"{result['video_to_text_r1']:.3f}, text->first frame {result['text_to_image_r1']:.3f}; model: {out}")
