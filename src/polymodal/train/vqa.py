"""Training for the fusion (VQA) models.

It runs on the step loop the contrastive trainer uses (`engine.StepLoop`: AdamW without decay on
gains and biases, the warm-up + cosine schedule on progress = max(step, clock) so that
`time_budget` ends on time, evaluation with the clock paused) and logs to the same
`MetricsLog`, but the batch is different: B images with all their questions, so each image is
encoded once for its Q questions.

Modality dropout: each training image is replaced by a blank (grey) image with probability
`image_dropout`, each question by mask tokens with probability `question_dropout`, so the model
learns to answer from what is left.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from ..data.degrade import blank_images, mask_questions
from ..data.schema import DataError
from ..data.vqa import MASK, VQATensors
from ..models.fusion import save_vqa
from ..utils import pick_device, seed_everything
from .engine import StepLoop, TrainingProgress
from .metrics import MetricsLog
from .optim import build_optimizer, clip_and_step


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


def modality_dropout(images: torch.Tensor, questions: torch.Tensor, image_p: float, question_p: float,
                     mask_id: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Each image (B, 3, H, W) blanked with probability `image_p`, each question (B, Q, L) masked
    with probability `question_p`; the draws come from `gen`."""
    if image_p:
        drop = torch.rand(len(images), generator=gen) < image_p
        images = torch.where(drop[:, None, None, None], blank_images(images), images)
    if question_p:
        drop = torch.rand(questions.shape[:2], generator=gen) < question_p
        questions = torch.where(drop[..., None], mask_questions(questions, mask_id), questions)
    return images, questions


@dataclass
class VQASteps:
    """What one VQA step does, and the accuracy curve from `evaluate(model)` every `eval_every`
    seconds of training, for `StepLoop` to run."""

    model: torch.nn.Module
    train: VQATensors
    cfg: VQATrainConfig
    optimizer: torch.optim.Optimizer
    progress: TrainingProgress
    log: MetricsLog
    device: str
    evaluate: Callable[[object], dict[str, float]] | None = None
    say: Callable[[str], None] = print
    curve: list[dict] = field(default_factory=list)

    def __post_init__(self):
        self.gen = torch.Generator().manual_seed(self.cfg.seed)  # batch order and dropout draws
        self.mask_id = self.model.vocab.index[MASK]
        self.next_eval = self.cfg.eval_every
        self.questions_per_image = self.train.questions.shape[1]

    def batches(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """One shuffled epoch of (images, questions, answers), modality dropout applied."""
        n, b = len(self.train), self.cfg.batch_images
        order = torch.randperm(n, generator=self.gen)
        for first in range(0, n - b + 1, b):
            idx = order[first:first + b]
            images, questions = modality_dropout(self.train.images[idx], self.train.questions[idx],
                                                 self.cfg.image_dropout, self.cfg.question_dropout, self.mask_id,
                                                 self.gen)
            yield images, questions, self.train.answers[idx]

    def step(self, batch) -> dict[str, float]:
        images, questions, answers = batch
        logits = self.model(images.to(self.device), questions.to(self.device))["logits"]  # (B, Q, A)
        loss = F.cross_entropy(logits.flatten(0, 1), answers.to(self.device).flatten(), ignore_index=-1)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        clip_and_step(self.model, self.optimizer, self.cfg.grad_clip)
        return {"loss": loss.item()}

    def after_step(self, losses: dict[str, float]) -> str:
        """Log every 20 steps and evaluate when due (clock paused); returns the bar's description."""
        step, elapsed = self.progress.step, self.progress.elapsed
        rate = step * self.cfg.batch_images * self.questions_per_image / elapsed
        if step % 20 == 0:
            self.log.log(step, {"train/loss": losses["loss"], "train/lr": self.optimizer.param_groups[0]["lr"],
                                "train/questions_per_s": rate})
        if elapsed >= self.next_eval:
            with self.progress.paused():
                self.evaluate_now()
            self.next_eval += self.cfg.eval_every
        return f"loss {losses['loss']:.3f} {rate:,.0f} questions/s"

    def evaluate_now(self) -> None:
        """One point of the accuracy curve (nothing without an `evaluate`)."""
        if self.evaluate is None:
            return
        metrics = self.evaluate(self.model)
        self.model.train()
        step, elapsed = self.progress.step, self.progress.elapsed
        self.curve.append({"seconds": round(elapsed, 1), "step": step, "questions": self.questions_seen, **metrics})
        self.log.log(step, {f"val/{k}": v for k, v in metrics.items()})
        self.say(f"{elapsed:6.0f}s step {step}: " + ", ".join(f"{k} {v:.3f}" for k, v in metrics.items()))

    @property
    def questions_seen(self) -> int:
        return self.progress.step * self.cfg.batch_images * self.questions_per_image


def train_vqa(model, train: VQATensors, cfg: VQATrainConfig,
              evaluate: Callable[[object], dict[str, float]] | None = None) -> dict:
    """Train `model` in place; returns {"curve": [...], "seconds": training seconds, "steps": n}.
    `evaluate(model)` -> metrics is called every `eval_every` seconds and at the end; its results
    (with the elapsed training time) form the accuracy curve."""
    if len(train) < cfg.batch_images:
        raise DataError(f"{len(train)} training images are fewer than one batch of {cfg.batch_images}")
    seed_everything(cfg.seed)
    device = pick_device(cfg.device)
    model.to(device)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    optimizer = build_optimizer(model, cfg.lr, cfg.weight_decay)
    progress = TrainingProgress(max(1, len(train) // cfg.batch_images) * cfg.epochs, cfg.time_budget)
    log = MetricsLog(out, enabled=True, resume=False)
    loop = StepLoop(model, optimizer, progress, cfg.lr, cfg.warmup, show=cfg.progress)
    steps = VQASteps(model, train, cfg, optimizer, progress, log, device, evaluate, say=loop.say)
    loop.run(steps.batches, steps.step, steps.after_step)
    steps.evaluate_now()
    log.close()
    training = {k: v for k, v in asdict(cfg).items() if k != "progress"}
    result = {"curve": steps.curve, "seconds": round(progress.elapsed, 1), "steps": progress.step,
              "questions_seen": steps.questions_seen, "training": training}
    save_vqa(model.cpu(), out, extra={"training": training, "steps": progress.step, "seconds": result["seconds"]})
    model.to(device)
    return result
