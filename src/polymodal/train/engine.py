"""The step loop that the contrastive and the VQA trainers share.

Training runs on *progress*, the further along of steps/total-steps and elapsed/time-budget, so
`--steps` gives the same model on any machine and `--time-budget 3m` gives a complete warm-up +
cosine schedule that ends on time. Evaluation and saving run with the clock paused: they do not
count against the budget.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from torch import nn

from ..utils import progress_bar
from .optim import lr_at, set_lr


@dataclass
class TrainingProgress:
    """Steps taken and training seconds elapsed (pauses excluded), and the fraction done."""

    total_steps: int
    time_budget: float | None = None  # seconds; None: steps alone decide
    step: int = 0
    elapsed: float = 0.0
    # Under DDP every rank must agree on the clock (the slowest rank's), so all stop on one step.
    agree: Callable[[float], float] = field(default=lambda seconds: seconds, repr=False)
    _origin: float = field(default=0.0, repr=False)

    def start(self) -> None:
        """Start (or restart after a resume) the clock at the elapsed time so far."""
        self._origin = time.perf_counter() - self.elapsed

    def tick(self) -> None:
        """One optimizer step done."""
        self.step += 1
        self.elapsed = self.agree(time.perf_counter() - self._origin)

    def fraction(self) -> float:
        p = self.step / self.total_steps
        if self.time_budget:
            p = max(p, self.elapsed / self.time_budget)
        return min(p, 1.0)

    @property
    def done(self) -> bool:
        return self.fraction() >= 1.0

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Time spent inside does not count as training."""
        paused_at = time.perf_counter()
        try:
            yield
        finally:
            self._origin += time.perf_counter() - paused_at


class StepLoop:
    """Epochs of batches until progress reaches 1 (or `max_epochs`): the learning rate set from
    progress before each step, the clock ticked after it, the bar updated, and the caller's
    hooks run after each step and (clock paused) after each epoch.

    train_step(batch) -> {"loss": ..., ...}; after_step(losses) -> the bar's description;
    after_epoch(epochs done) -> None; `say` prints above the bar.
    """

    def __init__(self, model: nn.Module, optimizer, progress: TrainingProgress, lr: float, warmup: float,
                 show: bool = True):
        self.model, self.optimizer, self.progress = model, optimizer, progress
        self.lr, self.warmup, self.show = lr, warmup, show
        self._bar = None

    def run(self, epoch_batches: Callable[[int], Iterable], train_step: Callable[[object], dict[str, float]],
            after_step: Callable[[dict[str, float]], str], after_epoch: Callable[[int], None] | None = None,
            first_epoch: int = 0, max_epochs: int | None = None) -> int:
        """Returns the number of epochs done (counting those before `first_epoch`)."""
        progress, epoch = self.progress, first_epoch
        progress.start()
        with progress_bar(self.show, count=False) as bar:
            self._bar = bar
            task = bar.add_task("training", total=1000, completed=int(1000 * progress.fraction()))
            while not progress.done and (max_epochs is None or epoch < max_epochs):
                self.model.train()
                stepped = False
                for batch in epoch_batches(epoch):
                    stepped = True
                    set_lr(self.optimizer, lr_at(progress.fraction(), self.lr, self.warmup))
                    losses = train_step(batch)
                    progress.tick()
                    bar.update(task, completed=int(1000 * progress.fraction()), description=after_step(losses))
                    if progress.done:
                        break
                if not stepped:
                    raise ValueError(f"epoch {epoch + 1} had no batch: fewer samples than one batch")
                epoch += 1
                if after_epoch is not None:
                    with progress.paused():
                        after_epoch(epoch)
        return epoch

    def say(self, text: str) -> None:
        if self._bar is not None:
            self._bar.console.print(text)
