"""`polymodal data speak DATASET`: spoken captions for a dataset from the command line. The
synthesis code (and numpy, soundfile) is imported when the command runs, so `polymodal --help`
stays fast."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

console = Console()


def data_speak(
    dataset: Path = typer.Argument(..., help="A dataset directory with manifest.jsonl (e.g. from "
                                   "`polymodal data shapes`); its records get an `audio` field."),
    voices: int = typer.Option(48, min=1, help="Speakers in the voice pool (espeak-ng English accents x voice "
                               "variants, each with its own speed and pitch)."),
    held_out: float = typer.Option(0.2, "--held-out", min=0.0, max=0.99, help="Fraction of the speakers that the "
                                   "train split never hears; every other split hears them in half its records."),
    snr: float | None = typer.Option(None, "--snr", help="Mix background noise into every clip at this "
                                     "signal-to-noise ratio in dB (default: clean speech)."),
    noise: str = typer.Option("pink", help="The background noise with --snr: pink, white or babble."),
    caption: int | None = typer.Option(None, min=0, help="Speak this caption of each record (0: the first; "
                                       "default: cycle through them record by record)."),
    seed: int = typer.Option(0, help="Random seed: the same seed gives the same speakers, clips and noise."),
    workers: int | None = typer.Option(None, min=1, help="espeak-ng processes at once (default: all cores)."),
    progress: bool = typer.Option(True, help="Show a progress bar."),
):
    """Speak one caption of every record with espeak-ng, as a 16 kHz wav under DATASET/audio/.
    Rerunning resumes: clips already there for the same caption and speaker are kept."""
    from .data.speak import SpeakConfig, speak_dataset

    config = SpeakConfig(voices=voices, held_out_voices=held_out, seed=seed, snr_db=snr, noise=noise,
                         caption=caption, workers=workers)
    summary = speak_dataset(dataset, config, progress=progress)
    console.print(summary_line(summary), highlight=False, soft_wrap=True)  # one line, however narrow the terminal
    if summary["failed"]:
        console.print(summary["skips"], highlight=False, markup=False)


def summary_line(summary: dict) -> str:
    """One line: what was spoken, what was left alone, the voices, and how much audio there is."""
    kept = f" ({summary['kept']:,} kept from an earlier run)" if summary["kept"] else ""
    left = [f"{summary[key]:,} {what}" for key, what in (
        ("skipped_no_text", "without text"), ("own_audio", "with their own audio"),
        ("failed", "failed"), ("unreadable_lines", "unreadable manifest lines")) if summary[key]]
    noise = f" at {summary['snr_db']:g} dB SNR" if summary["snr_db"] is not None else ""
    return (f"spoke {summary['spoken']:,} of {summary['records']:,} records{kept}; "
            f"skipped {', '.join(left) or 'none'}; "
            f"voices: {summary['voices_seen']} seen, {summary['voices_held_out']} held out; "
            f"{summary['minutes']:,.1f} minutes of audio{noise}")
