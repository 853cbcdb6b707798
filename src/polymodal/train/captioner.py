"""Training the captioner (`models.generative.captioner`) on image-caption records.

Steps-defined on the step loop the other trainers share (`engine.StepLoop`: AdamW without decay
on gains and biases, warm-up + cosine on progress), logged to the same `MetricsLog`; each step
draws one of each image's captions, as the contrastive trainer does. The checkpoint is written at
the end (atomically, with the training settings and the final loss).

`contrastive=True` trains CoCa-style instead (`models.generative.coca`): an aligned model from the
`aligned_model` preset shares its image tower with the captioner, and each step minimises its
contrastive loss (with NegCLIP hard negatives where the data has them, as `polymodal train` does)
plus `caption_weight` x the captioning loss; `caption_weight=0` is contrastive-only training on
the same data, schedule and initial weights (the comparison in benchmarks/coca_joint.py).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from ..data.formats import load_records
from ..data.pairs import ImageTextPairs
from ..data.schema import DataError
from ..losses import clip_loss
from ..models.generative.captioner import Captioner, caption_loss, create_captioner, save_captioner
from ..models.generative.coca import CocaModel, create_coca, save_coca
from ..utils import pick_device, seed_everything
from .engine import StepLoop, TrainingProgress
from .metrics import MetricsLog
from .optim import build_optimizer, clip_and_step


@dataclass
class CaptionTrainConfig:
    data: str
    out: str
    model: str = "shapes-captioner-small"  # a preset name or a CaptionerConfig JSON file
    steps: int = 2000
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup: float = 0.05
    grad_clip: float = 1.0
    seed: int = 0
    device: str = "auto"
    progress: bool = True
    contrastive: bool = False  # CoCa: train an aligned model's contrastive loss jointly
    caption_weight: float = 1.0  # the captioning loss's weight beside the contrastive one (0: contrastive only)
    aligned_model: str = "shapes-cnn-small"  # the aligned preset whose image tower the captioner shares
    hard_negatives: int = 3  # counterfactual captions per image for the contrastive loss (ShapesWorld)


def _train_step(model: Captioner, optimizer, grad_clip: float, device: str):
    def step(batch) -> dict[str, float]:
        ids = model.tokenizer(batch.captions)
        loss = caption_loss(model(batch.images.to(device), ids.to(device)))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        clip_and_step(model, optimizer, grad_clip)
        return {"loss": loss.item()}

    return step


def _joint_step(model: CocaModel, optimizer, cfg: CaptionTrainConfig, device: str):
    def step(batch) -> dict[str, float]:
        aligned, captioner = model.aligned, model.captioner
        text = aligned.tokenizer(batch.captions).to(device)
        negatives = aligned.tokenizer(batch.negatives).to(device) if batch.negatives else None
        ids = captioner.tokenizer(batch.captions).to(device) if cfg.caption_weight else None
        out = model(batch.images.to(device), text, ids, negatives)
        terms = clip_loss(out)
        loss = terms["contrastive_loss"]
        if ids is not None:
            terms["caption_loss"] = caption_loss(out)
            loss = loss + cfg.caption_weight * terms["caption_loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        clip_and_step(model, optimizer, cfg.grad_clip)
        return {"loss": loss.item(), **{k: v.item() for k, v in terms.items()}}

    return step


def _create_model(cfg: CaptionTrainConfig, captions: list[str]) -> Captioner | CocaModel:
    if not cfg.contrastive:
        if cfg.caption_weight != 1.0:
            raise ValueError("--caption-weight weighs the captioning loss against the contrastive one: "
                             "it needs --contrastive")
        return create_captioner(cfg.model, captions)
    if cfg.caption_weight < 0:
        raise ValueError(f"--caption-weight must be 0 or more, not {cfg.caption_weight}")
    return create_coca(cfg.aligned_model, cfg.model, captions)


def train_captioner(cfg: CaptionTrainConfig) -> dict:
    """Train a new captioner (with `cfg.contrastive`, a joint CoCa model) on the train split of
    `cfg.data` and save it to `cfg.out`; returns {"steps", "seconds", "loss", "images"} and, for
    joint training, the last step's "contrastive_loss" and "caption_loss"."""
    seed_everything(cfg.seed)
    data = load_records(cfg.data)
    train_set = data.split("train")
    if not train_set.records:
        raise DataError(f"{cfg.data}: no 'train' split to train the captioner on")
    model = _create_model(cfg, [c for r in train_set.records for c in r.text])
    captioner = model.captioner if isinstance(model, CocaModel) else model
    pairs = ImageTextPairs(train_set, captioner.config.image.image_size, progress=cfg.progress)
    if len(pairs) < cfg.batch_size:
        raise DataError(f"{cfg.data}: {len(pairs)} training images are fewer than one batch of {cfg.batch_size}")
    device = pick_device(cfg.device)
    model.to(device)
    progress, last = _run(cfg, model, pairs, device)
    training = {k: v for k, v in asdict(cfg).items() if k != "progress"}
    result = {"steps": progress.step, "seconds": round(progress.elapsed, 1), **last, "images": len(pairs)}
    if isinstance(model, CocaModel):
        save_coca(model.cpu(), cfg.out, extra={"training": training, **result})
    else:
        save_captioner(model.cpu(), cfg.out, extra={"training": training, **result})
    return result


def _run(cfg: CaptionTrainConfig, model, pairs: ImageTextPairs, device: str) -> tuple[TrainingProgress, dict]:
    """The step loop, logged to `cfg.out`; returns the progress and the last step's losses."""
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    optimizer = build_optimizer(model, cfg.lr, cfg.weight_decay)
    progress = TrainingProgress(cfg.steps)
    log = MetricsLog(out, enabled=True, resume=False)
    last: dict[str, float] = {}

    def after_step(losses: dict[str, float]) -> str:
        last.update(losses)
        if progress.step % 20 == 0 or progress.done:
            log.log(progress.step, {**{f"train/{k}": v for k, v in losses.items()},
                                    "train/lr": optimizer.param_groups[0]["lr"]})
        return f"loss {losses['loss']:.3f}"

    joint = isinstance(model, CocaModel)
    step = _joint_step(model, optimizer, cfg, device) if joint else _train_step(model, optimizer, cfg.grad_clip,
                                                                                 device)
    negatives = cfg.hard_negatives if joint else 0
    loop = StepLoop(model, optimizer, progress, cfg.lr, cfg.warmup, show=cfg.progress)
    loop.run(lambda epoch: pairs.batches(cfg.batch_size, cfg.seed, epoch, hard_negatives=negatives), step,
             after_step)
    log.close()
    return progress, last
