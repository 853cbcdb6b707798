"""Speech recognition beside the audio towers: the cascade's first half (speech -> text, then the
text tower) and `polymodal transcribe`.

Transcribers by name (`load_transcriber`):
    pocketsphinx                 pocketsphinx's English acoustic model, constrained by a language
                                 model of a vocabulary (a dataset's captions or a text file), or by
                                 a JSGF grammar; with neither, its general English model
    hf:<repo id>                 a Whisper checkpoint from the Hugging Face cache (or the hub)
    <dir>                        a Whisper model directory, as `save_pretrained` writes it

Every transcriber has `model_id` and `transcribe(waves) -> list[str]`: (N,) float32 16 kHz mono
waveforms (`modalities.audio_files.load_audio` reads files that way) to one transcript each.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from ..errors import CheckpointError, DataError

POCKETSPHINX = "pocketsphinx"


class Transcriber(Protocol):
    model_id: str

    def transcribe(self, waves: Sequence[np.ndarray]) -> list[str]: ...


def load_transcriber(name: str = POCKETSPHINX, vocabulary: Sequence[str] | str | Path | None = None,
                     grammar: str | Path | None = None, pronunciations: dict | str | Path | None = None,
                     vocabulary_split: str | None = "train", device: str = "cpu", workers: int = 1,
                     batch_size: int = 8) -> Transcriber:
    """The transcriber `name` names (see the module doc). pocketsphinx only: `vocabulary` (captions,
    or a dataset / text file to read them from: `read_vocabulary`), `grammar` (JSGF text, from its
    `#JSGF` header, or a file), `pronunciations` (word -> ARPAbet, or a cmudict-style file) and
    `workers` (processes). Whisper only: `device` and `batch_size`."""
    if name == POCKETSPHINX:
        return _load_pocketsphinx(vocabulary, grammar, pronunciations, vocabulary_split, workers)
    if vocabulary is not None or grammar is not None:
        raise ValueError(f"{name}: a vocabulary or a grammar constrains pocketsphinx only; Whisper takes neither")
    from .whisper_asr import is_whisper_dir, load_whisper

    if name.startswith("hf:"):
        return load_whisper(name[3:], device, batch_size)
    path = Path(name)
    if not path.exists():
        raise CheckpointError(f"{name}: no such model directory (transcribers are named {POCKETSPHINX}, "
                              f"hf:<Whisper repo id> or a Whisper model directory)")
    if not is_whisper_dir(path):
        raise CheckpointError(f"{name}: not a Whisper model directory (no config.json with model_type whisper)")
    return load_whisper(path, device, batch_size)


def _load_pocketsphinx(vocabulary, grammar, pronunciations, split: str | None, workers: int):
    from .pocketsphinx_asr import PocketsphinxTranscriber

    if vocabulary is not None and grammar is not None:
        raise ValueError("give pocketsphinx a vocabulary or a grammar, not both")
    if isinstance(pronunciations, (str, Path)):
        pronunciations = read_pronunciations(pronunciations)
    if grammar is not None:
        is_text = isinstance(grammar, str) and grammar.lstrip().startswith("#JSGF")
        text = grammar if is_text else _read_text(Path(grammar))
        return PocketsphinxTranscriber.from_grammar(text, pronunciations, workers)
    if vocabulary is None:
        return PocketsphinxTranscriber.general(workers)
    texts = read_vocabulary(vocabulary, split) if isinstance(vocabulary, (str, Path)) else list(vocabulary)
    return PocketsphinxTranscriber.from_texts(texts, pronunciations, workers)


def read_vocabulary(source: str | Path, split: str | None = "train") -> list[str]:
    """The sentences a language model is built from: a text file's non-empty lines (.txt), or
    the captions of a dataset (any format `load_records` reads) in `split` (None: every split).
    The default is the train split, so that a cascade scored on test speech has not been told
    its test sentences."""
    source = Path(source)
    if source.suffix.lower() == ".txt":
        return [line.strip() for line in _read_text(source).splitlines() if line.strip()]
    from ..data import load_records

    records = load_records(source)
    chosen = records.split(split) if split else records
    if not chosen.records:
        have = ", ".join(f"{name} ({n})" for name, n in records.splits.items()) or "none"
        raise DataError(f"{source}: no records in split '{split}' to take a vocabulary from (splits: {have})")
    texts = [text for record in chosen.records for text in record.text if text.strip()]
    if not texts:
        raise DataError(f"{source}: no captions to take a vocabulary from")
    return texts


def read_pronunciations(path: str | Path) -> dict[str, list[str]]:
    """A pronouncing dictionary in cmudict's format: `word PH ON EM ES` a line, `word(2) ...` for
    another pronunciation, `;;;` comments."""
    entries: dict[str, list[str]] = {}
    for number, line in enumerate(_read_text(Path(path)).splitlines(), 1):
        if not line.strip() or line.startswith(";;;"):
            continue
        word, *phones = line.split()
        if not phones:
            raise DataError(f"{path}:{number}: '{word}' has no phones (a line is: word PH ON EM ES)")
        entries.setdefault(word.split("(", 1)[0].lower(), []).append(" ".join(phones))
    return entries


def _read_text(path: Path) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        reason = err.strerror if isinstance(err, OSError) and err.strerror else err.__class__.__name__
        raise DataError(f"{path}: cannot be read ({reason})") from None
