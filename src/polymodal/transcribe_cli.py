"""`polymodal transcribe FILES`: speech to text with pocketsphinx (constrained to a dataset's
vocabulary) or Whisper. Libraries are imported when the command runs, so `polymodal --help`
stays fast."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

console = Console()
errors = Console(stderr=True)
ALL_SPLITS = "all"


def transcribe_cmd(
    files: list[Path] = typer.Argument(..., help="Audio files (wav, flac, mp3, ogg/opus); any rate, mixed to mono."),
    model: str = typer.Option("pocketsphinx", help="pocketsphinx, hf:<Whisper repo id> or a Whisper model directory."),
    vocabulary: Path | None = typer.Option(None, help="pocketsphinx: a dataset (directory, CSV, COCO JSON ...) or "
                                           "a .txt file of sentences, one a line, whose words and word order "
                                           "build the language model. Without it (or --grammar), pocketsphinx's "
                                           "general English model: slower and far less accurate."),
    vocabulary_split: str = typer.Option("train", help="The dataset split whose captions build the language "
                                         f"model ('{ALL_SPLITS}': every split)."),
    grammar: Path | None = typer.Option(None, help="pocketsphinx: a JSGF grammar file instead of --vocabulary "
                                        "(only the sentences it generates can come out)."),
    dictionary: Path | None = typer.Option(None, help="pocketsphinx: pronunciations for words cmudict lacks, in "
                                           "cmudict's format (word PH ON EM ES, one a line)."),
    json_out: bool = typer.Option(False, "--json", help="Print JSON lines {file, transcript} instead of a table."),
    workers: int = typer.Option(1, min=1, help="pocketsphinx: decoding processes."),
    batch_size: int = typer.Option(8, min=1, help="Whisper: clips a batch."),
    device: str = typer.Option("auto", help="Whisper: auto, cpu, cuda ..."),
):
    """Transcribe FILES; an unreadable, empty, silent or over-long file is skipped with one line saying why."""
    from .backends.asr import POCKETSPHINX, load_transcriber
    from .data.schema import DataError, printable_path

    readable, waves = _read_audio(files)
    if not readable:
        raise DataError("no readable audio file to transcribe")
    if model != POCKETSPHINX:
        from .utils import pick_device

        device = pick_device(device)
    with warnings.catch_warnings(record=True) as caught:  # "words not in the dictionary": one line each
        warnings.simplefilter("always")
        transcriber = load_transcriber(model, vocabulary=vocabulary, grammar=grammar, pronunciations=dictionary,
                                       vocabulary_split=None if vocabulary_split == ALL_SPLITS else vocabulary_split,
                                       device=device, workers=workers, batch_size=batch_size)
    for warning in caught:
        errors.print(f"warning: {warning.message}", highlight=False, markup=False, soft_wrap=True)
    transcripts = transcriber.transcribe(waves)
    names = [printable_path(path) for path in readable]
    if json_out:
        for name, text in zip(names, transcripts):
            print(json.dumps({"file": name, "transcript": text}))
        return
    table = Table()
    table.add_column("file")
    table.add_column("transcript")
    for name, text in zip(names, transcripts):  # Text: a "[...]" in a name is not rich markup
        table.add_row(Text(name), Text(text) if text else Text("(nothing recognised)", style="dim"))
    console.print(table)


def _read_audio(files: list[Path]) -> tuple[list[Path], list]:
    """The readable files and their waveforms; every other file named on stderr with its reason."""
    from .data.schema import UnreadableFileError
    from .modalities.audio_files import load_audio

    readable, waves = [], []
    for path in files:
        try:
            waves.append(load_audio(path))
            readable.append(path)
        except UnreadableFileError as err:
            errors.print(f"skipped {err}", highlight=False, markup=False, soft_wrap=True)  # one line, however long
    return readable, waves
