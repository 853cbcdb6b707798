"""Shared by the search-engine tests: a tiny untrained model and a folder of images to index."""

import shutil
from pathlib import Path

import polymodal
from polymodal.models.checkpoint import save_checkpoint

CAPTIONS = ["a small red circle", "a big blue square to the left of a green star", "a yellow triangle"]


def make_model(directory: Path, preset: str = "shapes-cnn-tiny", seed: int = 0, **overrides) -> Path:
    """Save a random-initialised checkpoint (indexing needs only a fixed encoder)."""
    import torch

    torch.manual_seed(seed)
    save_checkpoint(polymodal.create_model(preset, texts=CAPTIONS, **overrides), directory)
    return directory


def make_collection(directory: Path, shapes_dir: Path, n: int = 40, split: str = "test") -> Path:
    """n ShapesWorld images, with one caption sidecar, a corrupt file and a duplicate."""
    directory.mkdir(parents=True)
    files = sorted((shapes_dir / "images" / split).iterdir())[:n]
    for file in files:
        shutil.copy(file, directory / file.name)
    (directory / files[0].with_suffix(".txt").name).write_text("a caption from a sidecar file\n")
    (directory / "corrupt.png").write_bytes(b"not an image at all")
    sub = directory / "nested"
    sub.mkdir()
    shutil.copy(files[1], sub / "copy-of-second.png")  # same bytes: a duplicate
    return directory


def make_index(root: Path, shapes_dir: Path, n: int) -> tuple[Path, Path, Path]:
    """A random model, a collection of n images and its index under `root`: (model, images, index)."""
    from polymodal.index import BuildConfig, build_index

    model_dir = make_model(root / "model")
    images = make_collection(root / "images", shapes_dir, n=n)
    build_index(BuildConfig(source=str(images), out=str(root / "idx"), model=str(model_dir), progress=False))
    return model_dir, images, root / "idx"


# -- audio -------------------------------------------------------------------------------------------

RATE = 16_000


def sound(kind: str, seconds: float = 1.0, freq: float = 440.0, seed: int = 0):
    """A short distinct test sound ((N,) float32 at 16 kHz): a "tone", a "chirp" (a rising sweep)
    or "noise" (a white noise burst)."""
    import numpy as np

    t = np.arange(int(RATE * seconds)) / RATE
    if kind == "tone":
        wave = np.sin(2 * np.pi * freq * t)
    elif kind == "chirp":
        wave = np.sin(2 * np.pi * (freq + 2000 * t / seconds) * t)
    else:
        wave = np.random.default_rng(seed).standard_normal(len(t))
    return (0.3 * wave / np.abs(wave).max()).astype(np.float32)


def make_audio_collection(directory: Path) -> dict[str, Path]:
    """A folder of audio files the search can find (three sounds of several formats and lengths, a
    spoken caption, one with a sidecar caption) beside three that it must skip: an empty file, a
    silent one and a text file named .wav. -> {name: path} of the good ones."""
    from polymodal.data.speech_synthesis import synthesise
    from polymodal.modalities.audio_files import write_wav

    directory.mkdir(parents=True, exist_ok=True)
    good = {"tone": directory / "tone-440.wav", "chirp": directory / "chirp.flac",
            "noise": directory / "noise.ogg", "speech": directory / "a-red-circle.wav"}
    write_wav(good["tone"], sound("tone", 1.0, 440))
    _write(good["chirp"], sound("chirp", 1.5, 300), "FLAC")
    _write(good["noise"], sound("noise", 0.7), "OGG")
    write_wav(good["speech"], synthesise("a small red circle"))
    good["tone"].with_suffix(".txt").write_text("a pure tone at 440 Hz\n")
    (directory / "empty.wav").write_bytes(b"")
    write_wav(directory / "silent.wav", sound("tone", 1.0) * 0)
    (directory / "notes.wav").write_text("hello, not a sound")
    return good


def _write(path: Path, wave, fmt: str) -> None:
    import soundfile as sf

    sf.write(str(path), wave, RATE, format=fmt, subtype="VORBIS" if fmt == "OGG" else None)


def make_mixed_index(root: Path, shapes_dir: Path, n_images: int = 4) -> tuple[Path, Path, dict[str, Path]]:
    """A random audio-capable model, a folder of images and audio files, and its index under `root`:
    (model, index, {name: path} of the audio files that are in it)."""
    from polymodal.index import BuildConfig, build_index

    model_dir = make_model(root / "model", preset="shapes-cnn-audio")
    media = root / "media"
    sounds = make_audio_collection(media)
    for file in sorted((shapes_dir / "images" / "test").iterdir())[:n_images]:
        shutil.copy(file, media / file.name)
    build_index(BuildConfig(source=str(media), out=str(root / "idx"), model=str(model_dir), progress=False))
    return model_dir, root / "idx", sounds
