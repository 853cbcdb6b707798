"""Speech from text with espeak-ng (a Debian package the project's set-up installs): one
sentence -> 16 kHz float32 samples, in a chosen voice, speed and pitch.

espeak-ng is a formant synthesiser: fast (tens of milliseconds a sentence on one core), fully
offline, and with dozens of accents and voice variants to tell speakers apart."""

from __future__ import annotations

import io
import shutil
import subprocess
from dataclasses import dataclass

import numpy as np

from ..errors import DataError
from ..modalities.audio_files import SAMPLE_RATE, resample

ESPEAK = "espeak-ng"


@dataclass(frozen=True)
class Voice:
    """One speaker: an espeak-ng language voice with a variant (`en-us+m3`), a speed in words a
    minute and a pitch (0-99)."""

    accent: str = "en-us"
    variant: str = "m3"
    speed: int = 160
    pitch: int = 50

    @property
    def name(self) -> str:
        return f"{self.accent}+{self.variant}"

    def to_dict(self) -> dict:
        return {"voice": self.name, "speed": self.speed, "pitch": self.pitch}


def espeak_available() -> bool:
    return shutil.which(ESPEAK) is not None


def synthesise(text: str, voice: Voice = Voice()) -> np.ndarray:
    """`text` spoken by `voice` -> (N,) float32 samples at 16 kHz."""
    import soundfile as sf

    if not espeak_available():
        raise DataError(f"{ESPEAK} is not installed (apt-get install -y espeak-ng; `make install` does it)")
    if not text.strip():
        raise DataError("empty text: nothing to speak")
    # `--stdout` writes a wav; the text goes on stdin so that no caption is read as an option.
    done = subprocess.run([ESPEAK, "-v", voice.name, "-s", str(voice.speed), "-p", str(voice.pitch), "--stdout"],
                          input=text.encode("utf-8"), capture_output=True, timeout=60)
    if done.returncode or not done.stdout:
        raise DataError(f"{ESPEAK} failed for voice {voice.name}: {done.stderr.decode(errors='replace').strip()}")
    wave, rate = sf.read(io.BytesIO(done.stdout), dtype="float32")
    return resample(wave, rate, SAMPLE_RATE)
