"""AdamW with decoupled weight decay on matrices only, and a warm-up + cosine schedule that runs
on training progress (steps or wall-clock time, whichever is further along)."""

from __future__ import annotations

import math

import torch
from torch import nn


def build_optimizer(model: nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        # Gains, biases, embeddings' positions and the temperature are not regularised (as in CLIP).
        (decay if p.ndim >= 2 and "pos" not in name else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.98), eps=1e-6)


def lr_at(progress: float, base_lr: float, warmup: float, min_ratio: float = 0.0) -> float:
    """progress in [0, 1]; linear warm-up over the first `warmup` fraction, then cosine to 0."""
    if progress < warmup:
        return base_lr * progress / warmup
    t = (progress - warmup) / max(1e-8, 1 - warmup)
    return base_lr * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def clip_and_step(model: nn.Module, optimizer: torch.optim.Optimizer, grad_clip: float) -> None:
    """Clip the gradients' global norm to `grad_clip` (0: no clipping), then step."""
    if grad_clip:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
