"""Spoken records in memory: every record's audio decoded once into one int16 buffer, batched as
padded waveforms, with background noise mixed in for training.

A 4 s caption is 128 KB as int16, so 20,000 of them take 2.5 GB; float32 padded to 8 s would
take 10 GB. Unreadable or silent files are skipped and named in the data's skip log."""

from __future__ import annotations

import numpy as np
import torch

from ..modalities.audio import pad_or_cut
from ..modalities.audio_files import load_audio_records
from .schema import DataError, Record, RecordSet
from .speak import make_noise


def spoken_text(record: Record) -> str:
    """The caption a record's audio speaks (`polymodal data speak` records it), else its first."""
    speech = record.attributes.get("speech") or {}
    return speech.get("text") or (record.text[0] if record.text else "")


class SpokenClips:
    """The records of a RecordSet that have audio (and, with `need_image`, an image)."""

    def __init__(self, data: RecordSet, need_image: bool = False):
        usable = [r for r in data.records if r.audio and (r.image or not need_image)]
        if not usable:
            raise DataError(f"{data.root}: no records with audio{' and an image' if need_image else ''} "
                            "(add spoken captions with `polymodal data speak`)")
        self.records, waves = load_audio_records(usable, data.root, data.skips)  # bad files skipped, named
        if not self.records:
            raise DataError(f"{data.root}: none of the {len(usable)} audio files could be read")
        lengths = np.array([len(w) for w in waves])
        self.offsets = np.concatenate([[0], np.cumsum(lengths)])  # clip k is samples[offsets[k]:offsets[k + 1]]
        self.samples = np.concatenate([np.round(w * 32767).astype(np.int16) for w in waves])  # (total,) int16

    def __len__(self) -> int:
        return len(self.records)

    def wave(self, k: int) -> np.ndarray:
        """Clip k as (N,) float32."""
        return self.samples[self.offsets[k]:self.offsets[k + 1]].astype(np.float32) / 32767

    def batch(self, indices, seconds: float) -> tuple[torch.Tensor, torch.Tensor]:
        """((B, N) float32 waveforms cut to `seconds` and zero-padded, (B,) lengths)."""
        return pad_or_cut([self.wave(k) for k in indices], seconds)


def noise_bank(kind: str, n: int, samples: int, seed: int) -> torch.Tensor:
    """(n, samples) unit-power noise of `kind` (pink, white, babble: `speak.make_noise`), made once
    and sliced at random offsets while training: fresh noise every step would cost more than the step."""
    rng = np.random.default_rng(seed)
    return torch.from_numpy(np.stack([make_noise(kind, samples, rng) for _ in range(n)]).astype(np.float32))


def mix_noise(waves: torch.Tensor, lengths: torch.Tensor, noise: torch.Tensor, snr_db: torch.Tensor) -> torch.Tensor:
    """(B, N) clips of (B,) lengths + (B, N) noise, scaled so that each clip's signal-to-noise
    ratio over its own samples is `snr_db` (B,); the padding stays silent."""
    valid = (torch.arange(waves.shape[1])[None] < lengths[:, None]).float()  # (B, N)
    noise = noise * valid
    signal_power = waves.pow(2).sum(dim=1, keepdim=True)  # (B, 1), both over the same samples
    noise_power = noise.pow(2).sum(dim=1, keepdim=True).clamp(min=1e-12)
    gain = torch.sqrt(signal_power / noise_power / 10 ** (snr_db[:, None] / 10))
    return waves + gain * noise

