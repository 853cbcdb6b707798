"""Training for the fusion (VQA) models.

It follows the shared loop's conventions and reuses its parts (AdamW without decay on gains and
biases, the warm-up + cosine schedule on progress = max(step, clock) so that `time_budget` ends on
time, MetricsLog's metrics.csv + TensorBoard, atomic checkpoints), but the batch is different: B
images with all their questions, so each image is encoded once for its Q questions.

Modality dropout: each training image is replaced by a blank (grey) image with probability
`image_dropout`, each question by mask tokens with probability `question_dropout`, so the model
learns to answer from what is left.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from ..data.vqa import MASK, VQATensors
from ..utils import pick_device, progress_bar, seed_everything
from .loop import MetricsLog
from .optim import build_optimizer, lr_at, set_lr


@dataclass
class VQATrainConfig:
    out: str
    epochs: int = 30
    time_budget: float | None = None  # seconds of training (evaluation excluded)
    # images per step, each with all its questions (20 on Sort-of-CLEVR). Small batches: binding the
    # question to its object needs many updates (after 5 minutes, 93 % non-relational with 8, 83 % with 32)
    batch_images: int = 8
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup: float = 0.05
    grad_clip: float = 1.0
    image_dropout: float = 0.0  # modality dropout: P(image blanked) per training image
    question_dropout: float = 0.0  # P(question masked) per training question
    eval_every: float = 60.0  # seconds of training between evaluations on the validation split
    seed: int = 0
    device: str = "auto"
    progress: bool = True


def blank_images(images: torch.Tensor) -> torch.Tensor:
    return torch.full_like(images, 128)


def noise_images(images: torch.Tensor, sigma: float = 0.5, seed: int = 0) -> torch.Tensor:
    """Gaussian pixel noise of std `sigma` (on a 0..1 scale), clipped."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(images.shape, generator=g) * sigma * 255
    return (images.float() + noise).clamp(0, 255).to(torch.uint8)


def mask_questions(questions: torch.Tensor, mask_id: int) -> torch.Tensor:
    """Every word replaced by the mask token (the question's length stays visible)."""
    return torch.where(questions > 0, torch.full_like(questions, mask_id), questions)


def train_vqa(model, train: VQATensors, cfg: VQATrainConfig,
              evaluate: Callable[[object], dict[str, float]] | None = None) -> dict:
    """Train `model` in place; returns {"curve": [...], "seconds": training seconds, "steps": n}.
    `evaluate(model)` -> metrics is called every `eval_every` seconds and at the end; its results
    (with the elapsed training time) form the accuracy curve."""
    from ..models.fusion import save_vqa

    seed_everything(cfg.seed)
    device = pick_device(cfg.device)
    model.to(device)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    optimizer = build_optimizer(model, cfg.lr, cfg.weight_decay)
    n = len(train)
    steps_per_epoch = max(1, n // cfg.batch_images)
    total_steps = steps_per_epoch * cfg.epochs
    mask_id = model.vocab.index[MASK]
    log = MetricsLog(out, enabled=True, resume=False)
    gen = torch.Generator().manual_seed(cfg.seed)
    step, elapsed, curve, next_eval = 0, 0.0, [], cfg.eval_every

    def progress_now() -> float:
        p = step / total_steps
        if cfg.time_budget:
            p = max(p, elapsed / cfg.time_budget)
        return min(p, 1.0)

    def run_eval(bar) -> None:
        if evaluate is None:
            return
        metrics = evaluate(model)
        model.train()
        curve.append({"seconds": round(elapsed, 1), "step": step, "questions": step * cfg.batch_images * train.questions.shape[1], **metrics})
        log.log(step, {f"val/{k}": v for k, v in metrics.items()})
        bar.console.print(f"{elapsed:6.0f}s step {step}: " + ", ".join(f"{k} {v:.3f}" for k, v in metrics.items()))

    model.train()
    start = time.perf_counter()
    with progress_bar(cfg.progress, count=False) as bar:
        task = bar.add_task("training", total=1000)
        done = False
        while not done:
            order = torch.randperm(n, generator=gen)
            for first in range(0, n - cfg.batch_images + 1, cfg.batch_images):
                idx = order[first:first + cfg.batch_images]
                images, questions, answers = train.images[idx], train.questions[idx], train.answers[idx]
                if cfg.image_dropout:
                    drop = torch.rand(len(idx), generator=gen) < cfg.image_dropout
                    images = torch.where(drop[:, None, None, None], blank_images(images), images)
                if cfg.question_dropout:
                    drop = torch.rand(questions.shape[:2], generator=gen) < cfg.question_dropout
                    questions = torch.where(drop[..., None], mask_questions(questions, mask_id), questions)
                set_lr(optimizer, lr_at(progress_now(), cfg.lr, cfg.warmup))
                logits = model(images.to(device), questions.to(device))["logits"]  # (B, Q, A)
                loss = F.cross_entropy(logits.flatten(0, 1), answers.to(device).flatten(), ignore_index=-1)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.grad_clip:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                optimizer.step()
                step += 1
                elapsed = time.perf_counter() - start
                rate = step * answers.numel() / elapsed
                bar.update(task, completed=int(1000 * progress_now()),
                           description=f"loss {loss.item():.3f} {rate:,.0f} questions/s")
                if step % 20 == 0:
                    log.log(step, {"train/loss": loss.item(), "train/lr": optimizer.param_groups[0]["lr"],
                                   "train/questions_per_s": rate})
                if elapsed >= next_eval:
                    paused = time.perf_counter()  # evaluation does not count against the budget
                    run_eval(bar)
                    start += time.perf_counter() - paused
                    next_eval += cfg.eval_every
                if progress_now() >= 1.0:
                    done = True
                    break
        run_eval(bar)
    log.close()
    result = {"curve": curve, "seconds": round(elapsed, 1), "steps": step,
              "questions_seen": step * cfg.batch_images * train.questions.shape[1],
              "training": {k: v for k, v in asdict(cfg).items() if k != "progress"}}
    save_vqa(model.cpu(), out, extra={"training": result["training"], "steps": step, "seconds": result["seconds"]})
    model.to(device)
    return result
