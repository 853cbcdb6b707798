"""Training the captioner (`models.generative.captioner`) on image-caption records.

Steps-defined on the step loop the other trainers share (`engine.StepLoop`: AdamW without decay
on gains and biases, warm-up + cosine on progress), logged to the same `MetricsLog`; each step
draws one of each image's captions, as the contrastive trainer does. The checkpoint is written at
the end (atomically, with the training settings and the final loss).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from ..data.formats import load_records
from ..data.pairs import ImageTextPairs
from ..data.schema import DataError
from ..models.generative.captioner import Captioner, caption_loss, create_captioner, save_captioner
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


def _train_step(model: Captioner, optimizer, grad_clip: float, device: str):
    def step(batch) -> dict[str, float]:
        ids = model.tokenizer(batch.captions)
        loss = caption_loss(model(batch.images.to(device), ids.to(device)))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        clip_and_step(model, optimizer, grad_clip)
        return {"loss": loss.item()}

    return step


def train_captioner(cfg: CaptionTrainConfig) -> dict:
    """Train a new captioner on the train split of `cfg.data` and save it to `cfg.out`; returns
    {"steps", "seconds", "loss", "images"}."""
    seed_everything(cfg.seed)
    data = load_records(cfg.data)
    train_set = data.split("train")
    if not train_set.records:
        raise DataError(f"{cfg.data}: no 'train' split to train the captioner on")
    captions = [c for r in train_set.records for c in r.text]
    model = create_captioner(cfg.model, captions)
    pairs = ImageTextPairs(train_set, model.config.image.image_size, progress=cfg.progress)
    if len(pairs) < cfg.batch_size:
        raise DataError(f"{cfg.data}: {len(pairs)} training images are fewer than one batch of {cfg.batch_size}")
    device = pick_device(cfg.device)
    model.to(device)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    optimizer = build_optimizer(model, cfg.lr, cfg.weight_decay)
    progress = TrainingProgress(cfg.steps)
    log = MetricsLog(out, enabled=True, resume=False)
    last: dict[str, float] = {}

    def after_step(losses: dict[str, float]) -> str:
        last.update(losses)
        if progress.step % 20 == 0 or progress.done:
            log.log(progress.step, {"train/loss": losses["loss"], "train/lr": optimizer.param_groups[0]["lr"]})
        return f"loss {losses['loss']:.3f}"

    loop = StepLoop(model, optimizer, progress, cfg.lr, cfg.warmup, show=cfg.progress)
    loop.run(lambda epoch: pairs.batches(cfg.batch_size, cfg.seed, epoch),
             _train_step(model, optimizer, cfg.grad_clip, device), after_step)
    log.close()
    training = {k: v for k, v in asdict(cfg).items() if k != "progress"}
    result = {"steps": progress.step, "seconds": round(progress.elapsed, 1), "loss": last.get("loss"),
              "images": len(pairs)}
    save_captioner(model.cpu(), out, extra={"training": training, **result})
    return result

