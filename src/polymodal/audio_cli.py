"""`polymodal train-audio`: bind audio into an aligned space, or train image, text and audio
together. Libraries (torch above all) are imported when the command runs, so `polymodal --help`
stays fast."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from .cli_options import parse_duration

console = Console()


def train_audio_cmd(
    data: Path = typer.Argument(..., help="Dataset whose train records carry audio (`polymodal data speak DATA`)."),
    out: Path = typer.Option(..., help="Checkpoint directory to write."),
    model: str = typer.Option("shapes-cnn-audio", help="A trained image-text checkpoint directory to bind audio "
                                                     "onto (its towers locked: ImageBind's recipe), or a preset "
                                                     "with an audio tower to train all three from scratch."),
    audio_tower: str = typer.Option("shapes-cnn-audio", help="Binding: the preset whose audio tower is added "
                                    "(shapes-cnn-audio: CNN + GRU; shapes-cnn-audio-cnn: CNN; "
                                    "shapes-cnn-audio-transformer: transformer)."),
    pairs: str = typer.Option("image-text,image-audio,text-audio", help="Contrastive terms, comma-separated. "
                              "Leave out text-audio to measure emergent audio-text alignment."),
    steps: int = typer.Option(2000, min=1, help="Optimizer steps."),
    time_budget: float | None = typer.Option(None, parser=parse_duration, help="Training time (e.g. 15m); "
                                             "whichever of --steps and this ends first."),
    batch_size: int = typer.Option(128, min=2),
    lr: float = typer.Option(2e-3, min=0.0),
    noise_prob: float = typer.Option(0.5, min=0.0, max=1.0, help="Share of training clips mixed with pink noise."),
    seed: int = typer.Option(0),
    device: str = typer.Option("auto", help="auto, cpu, cuda ..."),
):
    """Train an audio tower into the shared space of DATA's images and captions."""
    from .train.audio import AudioTrainConfig, train_audio

    result = train_audio(AudioTrainConfig(
        data=str(data), out=str(out), model=model, audio_tower=audio_tower,
        pairs=tuple(p.strip() for p in pairs.split(",") if p.strip()), steps=steps, time_budget=time_budget,
        batch_size=batch_size, lr=lr, noise_prob=noise_prob, seed=seed, device=device))
    val = "".join(f", {k.removeprefix('val_').replace('_', ' ')} {v:.3f}" for k, v in result.items()
                  if k.startswith("val_"))
    console.print(f"trained {result['steps']} steps in {result['seconds']} s ({result['clips_per_s']} clips/s, "
                  f"loss {result['loss']:.3f}{val}); checkpoint: {out}")
