"""Binding audio into an aligned space: `polymodal train-audio`.

Two recipes, one loop:
- bind (ImageBind's): `model` is a trained image-text checkpoint. An audio tower is added, the
  image and text towers are locked, and only the audio side learns, pulled towards the image
  (and, if asked, the text) of its record. Locked towers are fixed functions, so their
  embeddings are computed once, up front, and a step costs only the audio tower.
- tri-modal: `model` is a preset with an audio tower; all three towers train from scratch, and
  every pair of modalities a record carries adds a contrastive term.

Leaving "text-audio" out of `pairs` measures *emergent* alignment: audio meets text only through
the images both were aligned with.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from ..backends import save_model
from ..config import get_model_config
from ..data.formats import load_records
from ..data.pairs import ImageTextPairs
from ..data.schema import DataError, RecordSet
from ..data.spoken import SpokenClips, mix_noise, noise_bank, spoken_text
from ..losses import clip_loss
from ..modalities.audio_files import SAMPLE_RATE
from ..models.aligned import AlignedModel
from ..models.checkpoint import is_checkpoint, load_checkpoint
from ..models.factory import create_model
from ..models.interface import inference
from ..utils import pick_device, seed_everything
from .engine import StepLoop, TrainingProgress
from .metrics import MetricsLog
from .optim import build_optimizer, clip_and_step

PAIRS = ("image-text", "image-audio", "text-audio")


@dataclass
class AudioTrainConfig:
    data: str  # dataset whose records carry audio (and images, captions): `polymodal data speak`
    out: str  # checkpoint directory to write
    model: str = "shapes-cnn-audio"  # preset with an audio tower (tri-modal), or a checkpoint to bind audio onto
    audio_tower: str = "shapes-cnn-audio"  # bind: the preset whose audio tower is added
    pairs: tuple[str, ...] = PAIRS  # contrastive terms (bind drops image-text: both its towers are locked)
    steps: int = 2000
    time_budget: float | None = None  # seconds of training; the schedule is fitted to it
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 0.1
    warmup: float = 0.05
    noise_prob: float = 0.5  # fraction of training clips mixed with pink noise ...
    noise_snr: tuple[float, float] = (0.0, 30.0)  # ... at an SNR drawn uniformly from this range (dB)
    noise: str = "pink"  # pink, white or babble
    seed: int = 0
    device: str = "auto"
    progress: bool = True
    log_every: int = 10


def train_audio(cfg: AudioTrainConfig) -> dict:
    """Train; returns a summary (steps, seconds, clips/s, loss, validation R@1)."""
    _check_pairs(cfg.pairs)
    seed_everything(cfg.seed)
    device = pick_device(cfg.device)
    data = load_records(cfg.data)
    train_set = data.split("train")
    if not len(train_set):
        raise DataError(f"{cfg.data}: no records in split 'train' (splits: {data.splits})")
    model, bind = _build_model(cfg, train_set)
    pairs = tuple(p for p in cfg.pairs if not (bind and p == "image-text"))
    batches = AudioBatches(cfg, model, train_set, pairs, bind)
    if len(data.skips):
        print(data.skips.summary())
    model = model.to(device)
    optimizer = build_optimizer(model, cfg.lr, cfg.weight_decay)
    progress = TrainingProgress(cfg.steps, cfg.time_budget)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    log = MetricsLog(out, True, resume=False)
    loop = StepLoop(model, optimizer, progress, cfg.lr, cfg.warmup, show=cfg.progress)
    steps = _Steps(cfg, model, optimizer, batches, log, progress, device)
    loop.run(batches.epoch, steps.step, steps.after_step, max_epochs=None)
    log.close()
    summary = {"tower": model.config.audio.kind, "steps": progress.step, "seconds": round(progress.elapsed, 1),
               "pairs": list(pairs), "bind": bind,
               "clips": len(batches.clips), "clips_per_s": round(steps.seen / max(progress.elapsed, 1e-9), 1),
               "loss": steps.last_loss, **_validate(model, data)}
    training = {k: v for k, v in asdict(cfg).items() if k != "progress"}
    save_model(model.cpu(), out, extra={"training": training, "audio_training": summary})
    return summary


def _check_pairs(pairs) -> None:
    unknown = [p for p in pairs if p not in PAIRS]
    if unknown or not pairs:
        what = f"unknown modality pair {unknown[0]!r}" if unknown else "no modality pair to train on"
        raise ValueError(f"{what} (known: {', '.join(PAIRS)})")
    if not any("audio" in p for p in pairs):
        raise ValueError("no pair with audio: add image-audio or text-audio")


def _build_model(cfg: AudioTrainConfig, train_set: RecordSet) -> tuple[AlignedModel, bool]:
    """(model, bind?): a checkpoint gets an audio tower added (if it has none) and its image and
    text towers and temperature locked; a preset is built whole, every tower trainable."""
    if not is_checkpoint(cfg.model):
        config = get_model_config(cfg.model)
        if config.audio is None:
            raise ValueError(f"{cfg.model}: has no audio tower (use a preset such as shapes-cnn-audio)")
        return create_model(config, texts=(t for r in train_set for t in r.text)), False
    base = load_checkpoint(cfg.model)
    if base.config.audio is None:
        audio = get_model_config(cfg.audio_tower).audio
        if audio is None:
            raise ValueError(f"{cfg.audio_tower}: has no audio tower to add")
        model = AlignedModel(replace(base.config, audio=audio), base.tokenizer)
        model.load_state_dict(base.state_dict(), strict=False)  # everything but the new audio tower
    else:
        model = base
    model.lock(image=True, text=True)
    model.logit_scale.requires_grad_(False)
    return model.train(), True


class AudioBatches:
    """Shuffled epochs of (indices, waves, image, text) batches. A locked tower's side comes as
    cached unit embeddings, a trained one's as pixels (uint8) or token ids."""

    def __init__(self, cfg: AudioTrainConfig, model: AlignedModel, train_set: RecordSet, pairs, bind: bool):
        self.cfg, self.model, self.pairs = cfg, model, pairs
        self.clips = SpokenClips(train_set, need_image=any("image" in p for p in pairs))
        if len(self.clips) < cfg.batch_size:
            raise DataError(f"{cfg.data}: {len(self.clips)} spoken clips are fewer than one batch of {cfg.batch_size}")
        self.texts = [spoken_text(r) for r in self.clips.records]
        self.images = self._images(train_set) if any("image" in p for p in pairs) else None
        self.cached = self._cache_locked() if bind else {}
        self.noise = noise_bank(cfg.noise, 64, 2 * int(SAMPLE_RATE * model.config.audio.max_seconds), cfg.seed)

    def _images(self, train_set: RecordSet) -> torch.Tensor:
        """(N, 3, S, S) uint8, in the order of the spoken clips."""
        subset = RecordSet(train_set.root, self.clips.records, train_set.skips)
        pairs = ImageTextPairs(subset, self.model.config.image.image_size, self.cfg.progress, need_text=False)
        if len(pairs) != len(self.clips):
            raise DataError(f"{self.cfg.data}: {len(self.clips) - len(pairs)} images could not be read; "
                            "drop those records first")
        return pairs.images

    def _cache_locked(self) -> dict[str, torch.Tensor]:
        """Embeddings of the locked towers, computed once: (N, E) each."""
        cache = {}
        if self.images is not None:
            cache["image"] = self.model.encode_image(self.images)
        if any("text" in p for p in self.pairs):
            cache["text"] = self.model.encode_text(self.texts)
        return cache

    def epoch(self, epoch: int):
        """One shuffled epoch of index batches. Clips are grouped with others of similar length (within
        windows of 32 batches, the batches then shuffled): a batch is padded to its longest clip, and
        spoken captions run from 1.5 to 8 s."""
        rng = random.Random(f"{self.cfg.seed}/{epoch}")
        order = list(range(len(self.clips)))
        rng.shuffle(order)
        size = self.cfg.batch_size
        order = order[: len(order) - len(order) % size]
        lengths = np.diff(self.clips.offsets)
        batches = []
        for start in range(0, len(order), 32 * size):
            window = sorted(order[start:start + 32 * size], key=lambda k: lengths[k])
            batches += [window[i:i + size] for i in range(0, len(window), size)]
        rng.shuffle(batches)
        yield from batches

    def waves(self, indices) -> tuple[torch.Tensor, torch.Tensor]:
        """((B, N) training waveforms, (B,) lengths): a `noise_prob` share mixed with pink noise."""
        waves, lengths = self.clips.batch(indices, self.model.config.audio.max_seconds)
        noisy = torch.rand(len(waves)) < self.cfg.noise_prob
        if noisy.any():
            low, high = self.cfg.noise_snr
            rows = torch.randint(0, len(self.noise), (int(noisy.sum()),))
            shift = random.randrange(self.noise.shape[1] - waves.shape[1] + 1)
            noise = self.noise[rows, shift:shift + waves.shape[1]]
            snr = low + (high - low) * torch.rand(len(rows))
            waves[noisy] = mix_noise(waves[noisy], lengths[noisy], noise, snr)
        return waves, lengths


@dataclass
class _Steps:
    cfg: AudioTrainConfig
    model: AlignedModel
    optimizer: torch.optim.Optimizer
    batches: AudioBatches
    log: MetricsLog
    progress: TrainingProgress
    device: str
    seen: int = 0
    last_loss: float = math.nan
    _start: float = 0.0

    def step(self, indices) -> dict[str, float]:
        self.optimizer.zero_grad(set_to_none=True)
        features = self._features(indices)
        scale = self.model.logit_scale.clamp(max=math.log(100))
        terms = {}
        for pair in self.batches.pairs:
            a, b = pair.split("-")
            out = {"image_features": features[a], "text_features": features[b], "logit_scale": scale}
            terms[f"{a}_{b}_loss"] = clip_loss(out)["contrastive_loss"]
        loss = sum(terms.values())
        loss.backward()
        clip_and_step(self.model, self.optimizer, 1.0)
        return {**{k: v.item() for k, v in terms.items()}, "loss": loss.item()}

    def _features(self, indices) -> dict[str, torch.Tensor]:
        """Unit (B, E) features of each modality the pairs need: cached for locked towers."""
        b, model, dev = self.batches, self.model, self.device
        waves, lengths = b.waves(indices)
        feats = {"audio": model.audio_features(waves.to(dev), lengths.to(dev))}
        needed = {m for p in b.pairs for m in p.split("-")} - {"audio"}
        for name in needed:
            if name in b.cached:
                feats[name] = b.cached[name][indices].to(dev)
            elif name == "image":
                feats[name] = model.image_features(b.images[indices].to(dev))
            else:
                feats[name] = model.text_features(model.tokenizer([b.texts[i] for i in indices]).to(dev))
        return feats

    def after_step(self, losses: dict[str, float]) -> str:
        if not self._start:
            self._start = time.perf_counter()
        self.seen += self.cfg.batch_size
        self.last_loss = losses["loss"]
        rate = self.seen / max(time.perf_counter() - self._start, 1e-9)
        if self.progress.step % self.cfg.log_every == 0:
            self.log.log(self.progress.step, {**{f"train/{k}": v for k, v in losses.items()},
                                              "train/clips_per_s": rate,
                                              "train/lr": self.optimizer.param_groups[0]["lr"]})
        return f"loss {losses['loss']:.3f} {rate:,.0f} clips/s"


def _validate(model: AlignedModel, data: RecordSet, limit: int = 1000) -> dict[str, float]:
    """Audio->image and audio->text R@1 over the first `limit` spoken validation records."""
    if "val" not in data.splits:
        return {}
    val = data.split("val")
    val.records = [r for r in val.records if r.audio and r.image][:limit]
    if not val.records:
        return {}
    clips = SpokenClips(val, need_image=True)
    pairs = ImageTextPairs(RecordSet(val.root, clips.records, val.skips), model.config.image.image_size,
                           progress=False, need_text=False)
    with inference(model):
        audio = model.encode_audio([clips.wave(k) for k in range(len(clips))])
        image = model.encode_image(pairs.images)
        text = model.encode_text([spoken_text(r) for r in clips.records])
    target = torch.arange(len(audio))
    return {"val_audio_to_image_R1": round(((audio @ image.T).argmax(1) == target).float().mean().item(), 4),
            "val_audio_to_text_R1": round(((audio @ text.T).argmax(1) == target).float().mean().item(), 4)}
