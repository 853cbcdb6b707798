"""Reading audio files and uploads: one reader for every caller (datasets, the index, the server,
`transcribe`), every failure one UnreadableFileError naming the file and the reason.

soundfile (libsndfile: wav, flac, ogg/vorbis/opus, mp3) decodes, soxr resamples; no torch, so the
command line imports it cheaply."""

from __future__ import annotations

import io
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from ..data.schema import (  # noqa: F401  (AUDIO_EXTENSIONS: re-exported)
    AUDIO_EXTENSIONS,
    Record,
    SkipLog,
    UnreadableFileError,
)
from ..utils import atomic_path
from .image_files import read_image_bytes

SAMPLE_RATE = 16_000  # every tower, feature and recogniser here works at 16 kHz mono
# A caption or a query is seconds long; a 10-minute file is a mistake, refused from its header.
MAX_AUDIO_SECONDS = 60.0
MIN_AUDIO_SECONDS = 0.05
SILENCE_PEAK = 1e-4  # a peak below this (-80 dBFS) is silence: nothing to embed or transcribe


def load_audio(path: str | Path, max_seconds: float = MAX_AUDIO_SECONDS) -> np.ndarray:
    """An audio file as (N,) float32 mono at SAMPLE_RATE; any unusable file (unreadable, empty,
    0 s, over `max_seconds`, silent) raises one UnreadableFileError naming it and the reason."""
    return decode_audio_bytes(read_image_bytes(path), path, max_seconds)


def load_audio_records(records: Iterable[Record], root: str | Path, skips: SkipLog,
                       max_seconds: float = MAX_AUDIO_SECONDS) -> tuple[list[Record], list[np.ndarray]]:
    """(the records whose audio decodes, their (N,) waveforms). The readers only check that an audio
    file exists; a bulk job decodes through this, so that each unusable file (unreadable, empty,
    0 s, too long, silent) is skipped and named in `skips` (with `skips.strict`: raised), once."""
    kept, waves = [], []
    for record in records:
        if not record.audio:
            continue
        path = Path(root) / record.audio
        try:
            waves.append(load_audio(path, max_seconds))  # (N,)
        except UnreadableFileError as err:
            skips.skip(str(path), err.reason)
            continue
        kept.append(record)
    return kept, waves


def decode_audio_bytes(data: bytes, name: str | Path, max_seconds: float = MAX_AUDIO_SECONDS) -> np.ndarray:
    """Audio file bytes -> (N,) float32 mono at SAMPLE_RATE (channels averaged, resampled). The
    duration is checked from the header, before anything is decoded."""
    import soundfile as sf

    if not data:
        raise UnreadableFileError(name, "empty file")
    try:
        with sf.SoundFile(io.BytesIO(data)) as f:
            seconds = f.frames / f.samplerate if f.samplerate else 0.0
            _check_duration(seconds, name, max_seconds)
            wave = f.read(dtype="float32", always_2d=True)  # (N, C)
            rate = f.samplerate
    except UnreadableFileError:  # from _check_duration: a ValueError too, kept as it is (not rewrapped below)
        raise
    except sf.LibsndfileError as err:  # its str() names the BytesIO object; the reason alone helps more
        reason = (err.error_string or "unknown error").rstrip(".")
        raise UnreadableFileError(name, f"not a readable audio file ({reason})") from None
    except (RuntimeError, TypeError, ValueError) as err:  # a header soundfile cannot make sense of
        raise UnreadableFileError(name, f"not a readable audio file ({err.__class__.__name__})") from None
    return _check_signal(resample(wave.mean(axis=1), rate), name)


def resample(wave: np.ndarray, rate: int, target: int = SAMPLE_RATE) -> np.ndarray:
    """(N,) samples at `rate` -> float32 samples at `target` (soxr, high quality)."""
    import soxr

    if rate == target:
        return np.ascontiguousarray(wave, dtype=np.float32)
    return soxr.resample(wave.astype(np.float32), rate, target).astype(np.float32)


def _check_duration(seconds: float, name, max_seconds: float) -> None:
    if seconds < MIN_AUDIO_SECONDS:
        raise UnreadableFileError(name, f"empty audio ({seconds:.2f} s)")
    if seconds > max_seconds:
        raise UnreadableFileError(name, f"too long ({seconds:,.0f} s; the limit is {max_seconds:,.0f} s)")


def _check_signal(wave: np.ndarray, name) -> np.ndarray:
    if not np.isfinite(wave).all():
        raise UnreadableFileError(name, "damaged audio (samples that are not numbers)")
    if np.abs(wave).max(initial=0.0) < SILENCE_PEAK:
        raise UnreadableFileError(name, "silent audio (peak below -80 dBFS)")
    return wave


def write_wav(path: str | Path, wave: np.ndarray, rate: int = SAMPLE_RATE) -> None:
    """(N,) float samples -> a 16-bit PCM wav, written under a temporary name then renamed."""
    import soundfile as sf

    with atomic_path(Path(path)) as tmp:
        sf.write(str(tmp), np.clip(wave, -1.0, 1.0), rate, subtype="PCM_16", format="WAV")

