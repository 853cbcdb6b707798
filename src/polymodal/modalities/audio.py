"""Audio: log-mel and MFCC features, SpecAugment, and the audio towers (a small CNN and a small
transformer); reading files is `audio_files`.

The features are computed inside the model, from 16 kHz waveforms, so every caller (training,
`encode_audio`, the server) featurises the same way. The mel filterbank and the DCT come from
librosa, so the features match librosa's reference (`tests/test_audio.py`); the STFT is torch's,
so a batch is featurised in one call, on the GPU where there is one. SpecAugment is written here:
torchaudio (which has it) does not install beside this project's torch pin.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from ..config import AudioTowerConfig
from .audio_files import SAMPLE_RATE
from .image import EncoderOutput

N_FFT = 400  # 25 ms windows
HOP = 160  # every 10 ms
AMIN = 1e-10  # power floor before the log (librosa's power_to_db default)


def frames_for(samples: int | torch.Tensor):
    """Feature frames of a clip of `samples` (the STFT is centred: one frame per hop, plus one)."""
    return samples // HOP + 1


def pad_or_cut(waves: Sequence[np.ndarray], seconds: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Waveforms of any lengths -> ((B, N) float32, (B,) lengths): each cut to `seconds`, then
    zero-padded to the longest of the batch (N), so short clips cost little."""
    cap = int(round(seconds * SAMPLE_RATE))
    clips = [torch.as_tensor(np.asarray(w, dtype=np.float32)[:cap]) for w in waves]
    lengths = torch.tensor([len(c) for c in clips], dtype=torch.long)
    out = torch.zeros(len(clips), int(lengths.max()) if len(clips) else 0)
    for i, clip in enumerate(clips):
        out[i, : len(clip)] = clip
    return out, lengths


def strided(stage: nn.Module, x: torch.Tensor, valid: torch.Tensor, step: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """One stage with time stride `step` (1 or 2) over (B, ..., T) with (B, T) valid frames -> its
    output with the padding zeroed again, and the valid outputs (those whose first frame is valid).
    Zeroing after every stage keeps a clip's embedding the same alone or padded in any batch."""
    x, valid = stage(x), valid[:, ::step]
    shape = (len(x),) + (1,) * (x.dim() - 2) + (valid.shape[1],)
    return x * valid.reshape(shape).to(x.dtype), valid


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, T, D) tokens, (B, T) valid -> (B, D) mean of the valid tokens."""
    m = mask[..., None].to(x.dtype)
    return (x * m).sum(dim=1) / m.sum(dim=1).clamp(min=1.0)


class LogMel(nn.Module):
    """(B, N) waveforms at 16 kHz -> (B, n_mels, T) log-mel power in dB: librosa's
    `power_to_db(melspectrogram(y, sr=16000, n_fft=400, hop_length=160, n_mels=n_mels))`."""

    def __init__(self, n_mels: int):
        super().__init__()
        import librosa

        bank = librosa.filters.mel(sr=SAMPLE_RATE, n_fft=N_FFT, n_mels=n_mels)  # (M, F) Slaney-normalised
        # Not saved with the weights: it follows from the config.
        self.register_buffer("bank", torch.from_numpy(bank), persistent=False)
        self.register_buffer("window", torch.hann_window(N_FFT), persistent=False)

    def forward(self, waves: torch.Tensor) -> torch.Tensor:
        spec = torch.stft(waves.float(), N_FFT, HOP, window=self.window, center=True, pad_mode="constant",
                          return_complex=True)  # (B, F, T)
        power = spec.real.square() + spec.imag.square()  # (B, F, T) |X|^2: twice as fast as abs().square()
        mel = self.bank @ power  # (B, M, T)
        return 10.0 * torch.log10(mel.clamp(min=AMIN))


class MFCC(nn.Module):
    """(B, N) waveforms -> (B, n_mfcc, T): the orthonormal DCT-II of the log-mel over the mel axis,
    as `librosa.feature.mfcc(S=log-mel)` computes it."""

    def __init__(self, n_mels: int, n_mfcc: int):
        super().__init__()
        import scipy.fft

        self.log_mel = LogMel(n_mels)
        dct = scipy.fft.dct(np.eye(n_mels), type=2, norm="ortho", axis=0)[:n_mfcc]  # (C, M)
        self.register_buffer("dct", torch.from_numpy(dct.astype(np.float32)), persistent=False)

    def forward(self, waves: torch.Tensor) -> torch.Tensor:
        return self.dct @ self.log_mel(waves)


class SpecAugment(nn.Module):
    """Random frequency and time masks on (B, C, T) features, in training only (Park et al. 2019).
    Masked cells take the clip's mean, so a mask looks like no information, not like silence."""

    def __init__(self, freq_masks: int, freq_width: int, time_masks: int, time_width: int):
        super().__init__()
        self.masks = ((1, freq_masks, freq_width), (2, time_masks, time_width))  # (axis, count, widest)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        keep = torch.ones_like(x, dtype=torch.bool)
        for axis, count, widest in self.masks:
            size = x.shape[axis]
            for _ in range(count):
                width = torch.randint(0, widest + 1, (len(x), 1), device=x.device)  # (B, 1)
                start = (torch.rand(len(x), 1, device=x.device) * (size - width).clamp(min=1)).long()
                pos = torch.arange(size, device=x.device)[None]  # (1, size)
                hit = (pos >= start) & (pos < start + width)  # (B, size)
                keep &= ~(hit[:, :, None] if axis == 1 else hit[:, None, :])
        mean = x.mean(dim=(1, 2), keepdim=True)
        return torch.where(keep, x, mean)


class AudioFeatures(nn.Module):
    """Waveforms and their lengths -> the tower's input and its valid frames: log-mel (or MFCC)
    normalised per clip to zero mean and unit variance over the clip's own frames (so loudness,
    recording level and the batch's padding do not matter; padding becomes 0), then SpecAugment."""

    def __init__(self, cfg: AudioTowerConfig):
        super().__init__()
        self.extract = MFCC(cfg.n_mels, cfg.n_mfcc) if cfg.features == "mfcc" else LogMel(cfg.n_mels)
        self.augment = SpecAugment(cfg.freq_masks, cfg.freq_mask_width, cfg.time_masks, cfg.time_mask_width)

    def forward(self, waves: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.extract(waves)  # (B, C, T)
        valid = torch.arange(x.shape[2], device=x.device)[None] < frames_for(lengths.to(x.device))[:, None]  # (B, T)
        m = valid[:, None].to(x.dtype)  # (B, 1, T)
        count = m.sum(dim=(1, 2), keepdim=True) * x.shape[1]
        mean = (x * m).sum(dim=(1, 2), keepdim=True) / count
        std = (((x - mean) * m).pow(2).sum(dim=(1, 2), keepdim=True) / count).sqrt()
        x = (x - mean) / (std + 1e-5) * m
        return self.augment(x), valid


class AudioTransformer(nn.Module):
    """Features -> a convolutional stem that shortens time 4x (40 ms tokens) -> learned positions
    -> pre-norm transformer blocks -> mean of the tokens. Word order matters in a spoken caption
    ("red circle left of blue square"), and attention over positioned tokens keeps it."""

    def __init__(self, cfg: AudioTowerConfig):
        super().__init__()
        self.features = AudioFeatures(cfg)
        channels = cfg.n_mfcc if cfg.features == "mfcc" else cfg.n_mels
        self.stem = nn.ModuleList([nn.Sequential(nn.Conv1d(c, cfg.width, 3, stride=2, padding=1), nn.GELU())
                                   for c in (channels, cfg.width)])
        tokens = math.ceil(math.ceil(frames_for(int(round(cfg.max_seconds * SAMPLE_RATE))) / 2) / 2)
        self.pos = nn.Parameter(torch.randn(1, tokens, cfg.width) * 0.02)
        block = nn.TransformerEncoderLayer(cfg.width, cfg.heads, 4 * cfg.width, dropout=0.0, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(block, cfg.layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(cfg.width)
        self.output_dim = cfg.width

    def forward(self, waves: torch.Tensor, lengths: torch.Tensor) -> EncoderOutput:
        x, valid = self.features(waves, lengths)  # (B, C, T), (B, T)
        for stage in self.stem:
            x, valid = strided(stage, x, valid)
        x = x.transpose(1, 2)  # (B, T/4, D)
        x = self.norm(self.blocks(x + self.pos[:, : x.shape[1]], src_key_padding_mask=~valid))
        return EncoderOutput(tokens=x, pooled=masked_mean(x, valid))


class AudioCNN(nn.Module):
    """Features as a (1, C, T) picture -> conv stages (each halves both axes) -> frequency averaged
    out -> (B, T', D) tokens -> mean and max over time. The classic spectrogram CNN: fast, but the
    pooling forgets where in the clip a word was said."""

    def __init__(self, cfg: AudioTowerConfig):
        super().__init__()
        self.features = AudioFeatures(cfg)
        widths = [max(8, cfg.width >> (cfg.layers - 1 - i)) for i in range(cfg.layers)]
        self.stages = nn.ModuleList([
            nn.Sequential(nn.Conv2d(c_in, w, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU())
            for c_in, w in zip([1, *widths[:-1]], widths)])
        self.output_dim = 2 * widths[-1]

    def forward(self, waves: torch.Tensor, lengths: torch.Tensor) -> EncoderOutput:
        x, valid = self.features(waves, lengths)  # (B, C, T), (B, T)
        x = x[:, None]  # (B, 1, C, T)
        for stage in self.stages:
            x, valid = strided(stage, x, valid)  # (B, D, C', T'), (B, T')
        tokens = x.mean(dim=2).transpose(1, 2)  # (B, T', D)
        peak = tokens.masked_fill(~valid[..., None], float("-inf")).amax(dim=1)
        return EncoderOutput(tokens=tokens, pooled=torch.cat([masked_mean(tokens, valid), peak], dim=-1))


class AudioCRNN(nn.Module):
    """Features as a (1, C, T) picture -> conv stages (each halves frequency; the first three also
    time, to 80 ms steps) -> a bidirectional GRU over time -> (B, T/8, D) tokens -> mean and max.
    The convolutions find the sounds, the GRU reads them in order, so "red circle left of blue
    square" and its swap differ where the CNN's pooling cannot tell them apart. (40 ms steps made
    a training step 1.6x slower.)"""

    TIME_STAGES = 3  # stages that halve time

    def __init__(self, cfg: AudioTowerConfig):
        super().__init__()
        self.features = AudioFeatures(cfg)
        widths = [max(8, cfg.width >> (cfg.layers - 1 - i)) for i in range(cfg.layers)]
        self.stages = nn.ModuleList([
            nn.Sequential(nn.Conv2d(c_in, w, 3, stride=(2, 2 if i < self.TIME_STAGES else 1), padding=1, bias=False),
                          nn.BatchNorm2d(w), nn.ReLU())
            for i, (c_in, w) in enumerate(zip([1, *widths[:-1]], widths))])
        channels = cfg.n_mfcc if cfg.features == "mfcc" else cfg.n_mels
        bands = math.ceil(channels / 2 ** cfg.layers)  # each stage halves the bands, rounding up
        self.rnn = nn.GRU(widths[-1] * bands, cfg.width // 2, batch_first=True, bidirectional=True)
        self.output_dim = 2 * cfg.width

    def forward(self, waves: torch.Tensor, lengths: torch.Tensor) -> EncoderOutput:
        x, valid = self.features(waves, lengths)  # (B, C, T), (B, T)
        x = x[:, None]  # (B, 1, C, T)
        for i, stage in enumerate(self.stages):
            x, valid = strided(stage, x, valid, 2 if i < self.TIME_STAGES else 1)  # (B, D, C', T'), (B, T')
        x = x.flatten(1, 2).transpose(1, 2)  # (B, T', D * C')
        steps = valid.sum(dim=1).clamp(min=1)
        packed = nn.utils.rnn.pack_padded_sequence(x, steps.cpu(), batch_first=True, enforce_sorted=False)
        tokens, _ = nn.utils.rnn.pad_packed_sequence(self.rnn(packed)[0], batch_first=True,
                                                     total_length=x.shape[1])  # (B, T', width), padding 0
        peak = tokens.masked_fill(~valid[..., None], float("-inf")).amax(dim=1)
        return EncoderOutput(tokens=tokens, pooled=torch.cat([masked_mean(tokens, valid), peak], dim=-1))


AUDIO_TOWERS = {"transformer": AudioTransformer, "cnn": AudioCNN, "crnn": AudioCRNN}


def build_audio_tower(cfg: AudioTowerConfig) -> nn.Module:
    if cfg.kind not in AUDIO_TOWERS:
        raise ValueError(f"unknown audio tower kind '{cfg.kind}' (known: {', '.join(AUDIO_TOWERS)})")
    if cfg.features not in ("logmel", "mfcc"):
        raise ValueError(f"unknown audio features '{cfg.features}' (known: logmel, mfcc)")
    return AUDIO_TOWERS[cfg.kind](cfg)
