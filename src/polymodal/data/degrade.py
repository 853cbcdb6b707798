"""Degraded inputs: blank or noisy images and masked questions.

Training uses them for modality dropout, evaluation for its robustness conditions; both import
them from here, below either.
"""

from __future__ import annotations

import torch


def blank_images(images: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) uint8 -> the same shape, every pixel mid-grey."""
    return torch.full_like(images, 128)


def noise_images(images: torch.Tensor, sigma: float = 0.5, seed: int = 0) -> torch.Tensor:
    """Gaussian pixel noise of std `sigma` (on a 0..1 scale), clipped."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(images.shape, generator=g) * sigma * 255
    return (images.float() + noise).clamp(0, 255).to(torch.uint8)


def mask_questions(questions: torch.Tensor, mask_id: int) -> torch.Tensor:
    """Every word replaced by the mask token (the question's length stays visible)."""
    return torch.where(questions > 0, torch.full_like(questions, mask_id), questions)
