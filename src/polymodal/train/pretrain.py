"""Self-supervised pretraining of one tower (`polymodal pretrain`), run by the shared step loop.

The model is the aligned model a later `polymodal train --init-from` builds (same preset, same
tokenizer from the same captions); the objective (models/ssl.py) trains one of its towers through
a throw-away head. The checkpoint is a normal polymodal checkpoint whose config.json also says
which tower was pretrained, and how.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..backends import save_model
from ..data.formats import load_records
from ..data.pairs import ImageTextPairs
from ..data.schema import DataError, RecordSet
from ..models.factory import create_model
from ..models.ssl import ViewAugment, build_objective
from ..utils import pick_device, resolve_precision, seed_everything
from .engine import StepLoop, TrainingProgress
from .metrics import MetricsLog
from .optim import build_optimizer, clip_and_step

# Learning rates that pretrained well in short CPU runs (SimCLR and MAE as their papers' AdamW
# recipes scaled to a batch of 128; MLM like the contrastive trainer).
DEFAULT_LR = {"simclr": 1e-3, "mae": 1.5e-3, "mlm": 2e-3}
UNBOUNDED_STEPS = 10**9  # a time budget alone decides


@dataclass
class PretrainConfig:
    data: str  # dataset directory (or any format the loaders read); its 'train' split is used
    out: str  # checkpoint directory to write
    objective: str = "simclr"  # "simclr" (image tower), "mae" (ViT image tower) or "mlm" (scratch text tower)
    model: str = "shapes-vit-tiny"  # preset name or JSON path: the same one `train --init-from` then uses
    steps: int | None = None  # optimizer steps; None with no time budget: 500
    time_budget: float | None = None  # seconds of training; the schedule is fitted to it
    batch_size: int = 128
    lr: float | None = None  # None: DEFAULT_LR of the objective
    weight_decay: float = 0.05
    warmup: float = 0.05
    grad_clip: float = 1.0
    precision: str = "auto"
    temperature: float = 0.2  # simclr: NT-Xent temperature
    mask_ratio: float = 0.75  # mae: fraction of patches hidden
    norm_pix: bool = True  # mae: targets are each patch's pixels normalised on their own (MAE's choice)
    mask_prob: float = 0.15  # mlm: fraction of word tokens predicted
    seed: int = 0
    device: str = "auto"
    strict: bool = False
    progress: bool = True
    log_every: int = 10


def objective_options(cfg: PretrainConfig) -> dict:
    return {"simclr": {"temperature": cfg.temperature}, "mae": {"mask_ratio": cfg.mask_ratio, "norm_pix": cfg.norm_pix},
            "mlm": {"mask_prob": cfg.mask_prob}}.get(cfg.objective, {})


class CaptionBatches:
    """The captions of a split as shuffled id batches (mlm needs no images decoded)."""

    def __init__(self, data: RecordSet, tokenizer):
        self.captions = [t for r in data.records for t in r.text]
        if not self.captions:
            raise DataError(f"{data.root}: no captions to pretrain the text tower on")
        self.tokenizer = tokenizer

    def steps_per_epoch(self, batch_size: int) -> int:
        return len(self.captions) // batch_size

    def batches(self, batch_size: int, seed: int, epoch: int) -> Iterator[torch.Tensor]:
        order = list(range(len(self.captions)))
        random.Random(f"{seed}/{epoch}").shuffle(order)
        for start in range(0, len(order) - batch_size + 1, batch_size):
            yield self.tokenizer([self.captions[i] for i in order[start:start + batch_size]])  # (B, L)


class ImageBatches:
    """The images of a split as shuffled uint8 batches, turned into two views for simclr."""

    def __init__(self, data: RecordSet, image_size: int, views: ViewAugment | None, progress: bool):
        self.pairs = ImageTextPairs(data, image_size, progress=progress, need_text=False)
        self.views = views

    def steps_per_epoch(self, batch_size: int) -> int:
        return self.pairs.steps_per_epoch(batch_size)

    def batches(self, batch_size: int, seed: int, epoch: int):
        for batch in self.pairs.batches(batch_size, seed, epoch):
            yield self.views(batch.images) if self.views else batch.images


def pretrain(cfg: PretrainConfig) -> Path:
    """Pretrain, saving the checkpoint after every epoch and at the end; returns its directory.
    config.json's "pretraining" holds the objective's figures on held-out samples before and after."""
    seed_everything(cfg.seed)
    device, out = pick_device(cfg.device), Path(cfg.out)
    data = load_records(cfg.data, strict=cfg.strict)
    train_set = data.split("train")
    if not len(train_set):
        raise DataError(f"{cfg.data}: no records in split 'train' (splits: {data.splits})")
    model = create_model(cfg.model, texts=(t for r in train_set for t in r.text))
    objective = build_objective(cfg.objective, model, **objective_options(cfg)).to(device)
    source, held_out = _batches(cfg, train_set, model), _batches(cfg, _held_out(data), model)
    if len(data.skips):
        print(data.skips.summary())
    if source.steps_per_epoch(cfg.batch_size) == 0:
        raise DataError(f"{cfg.data}: fewer training samples than one batch of {cfg.batch_size}")
    lr = cfg.lr if cfg.lr is not None else DEFAULT_LR[cfg.objective]
    optimizer = build_optimizer(objective, lr, cfg.weight_decay)
    progress = TrainingProgress(cfg.steps or (UNBOUNDED_STEPS if cfg.time_budget else 500), cfg.time_budget)
    out.mkdir(parents=True, exist_ok=True)
    log = MetricsLog(out, enabled=True, resume=False)
    figures = {"before": _diagnose(objective, held_out)}
    loop = StepLoop(objective, optimizer, progress, lr, cfg.warmup, show=cfg.progress)
    step = PretrainSteps(cfg, objective, optimizer, device, log, progress)

    def save(_epochs: int = 0) -> None:
        _save(model, objective, cfg, progress, out, {**figures, "first_loss": step.first_loss,
                                                     "last_loss": step.last_loss})

    loop.run(lambda epoch: source.batches(cfg.batch_size, cfg.seed, epoch), step, step.after_step, save)
    figures["after"] = _diagnose(objective, held_out)
    save()
    log.close()
    return out


def _held_out(data: RecordSet, n: int = 256) -> RecordSet:
    """The first `n` records of the validation split (of the training split where there is none)."""
    held = data.split("val" if "val" in data.splits else "train")
    held.records = held.records[:n]
    return held


def _batches(cfg: PretrainConfig, train_set: RecordSet, model) -> CaptionBatches | ImageBatches:
    if cfg.objective == "mlm":
        return CaptionBatches(train_set, model.tokenizer)
    size = model.config.image.image_size
    return ImageBatches(train_set, size, ViewAugment(size) if cfg.objective == "simclr" else None, cfg.progress)


@dataclass
class PretrainSteps:
    """One optimizer step of the objective, and what the bar and metrics.csv show."""

    cfg: PretrainConfig
    objective: torch.nn.Module
    optimizer: torch.optim.Optimizer
    device: str
    log: MetricsLog
    progress: TrainingProgress
    first_loss: float | None = None
    last_loss: float | None = None

    def __call__(self, batch) -> dict[str, float]:
        self.optimizer.zero_grad(set_to_none=True)
        with _autocast(self.device, self.cfg.precision):
            terms = self.objective(_to(batch, self.device))
        loss = sum(terms.values())
        loss.backward()
        clip_and_step(self.objective, self.optimizer, self.cfg.grad_clip)
        return {**{k: v.item() for k, v in terms.items()}, "loss": loss.item()}

    def after_step(self, losses: dict[str, float]) -> str:
        self.first_loss = losses["loss"] if self.first_loss is None else self.first_loss
        self.last_loss = losses["loss"]
        if self.progress.step % self.cfg.log_every == 0:
            self.log.log(self.progress.step, {**{f"pretrain/{k}": v for k, v in losses.items()},
                                              "pretrain/lr": self.optimizer.param_groups[0]["lr"]})
        return f"{self.cfg.objective} step {self.progress.step} loss {losses['loss']:.3f}"


def _to(batch, device: str):
    if isinstance(batch, tuple):
        return tuple(b.to(device, non_blocking=True) for b in batch)
    return batch.to(device, non_blocking=True)


def _autocast(device: str, precision: str):
    if resolve_precision(precision, device) == "bf16":
        return torch.autocast(device_type="cuda" if device.startswith("cuda") else "cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _save(model, objective, cfg: PretrainConfig, progress: TrainingProgress, out: Path, figures: dict) -> None:
    """The aligned model (the pretrained tower in it; the head is dropped) with what made it."""
    meta = {"objective": cfg.objective, "towers": [objective.tower], "step": progress.step,
            "seconds": round(progress.elapsed, 1), "figures": figures,
            "config": {k: v for k, v in asdict(cfg).items() if k != "progress"}}
    save_model(model, out, extra={"pretraining": meta})


def _diagnose(objective, source: CaptionBatches | ImageBatches, n: int = 256, seed: int = 0) -> dict[str, float]:
    """The objective's own figures (models/ssl.py `diagnose`) on one fixed batch of up to `n`
    held-out samples; the same masks and views every call, and the training RNG left as it was."""
    was_training = objective.training
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        batch = next(iter(source.batches(min(n, _count(source)), seed, 0)))
        objective.eval()
        figures = objective.diagnose(_to(batch, _device_of(objective)))
    objective.train(was_training)
    return {k: round(v, 4) for k, v in figures.items()}


def _device_of(module: torch.nn.Module) -> torch.device:
    return next(module.parameters()).device


def _count(source: CaptionBatches | ImageBatches) -> int:
    return len(source.captions) if isinstance(source, CaptionBatches) else len(source.pairs)
