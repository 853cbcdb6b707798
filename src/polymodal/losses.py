"""Contrastive losses. Each takes the model's output dict and returns {"<name>_loss": tensor}.

Under DDP the loss owns the gather (as open_clip's does): every rank gathers all features with
gradients, so each rank computes the loss of the *global* batch and the gradient equals the
single-process gradient on that batch.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward sends each rank the gradient of its own slice, summed over the
    ranks (every rank computes the same global loss). Written here because torch's own
    differentiable all_gather is deprecated; all_reduce + slice works on gloo and nccl alike."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.rank, ctx.n = dist.get_rank(), len(x)
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad)
        return grad[ctx.rank * ctx.n:(ctx.rank + 1) * ctx.n]


def gather_features(x: torch.Tensor) -> torch.Tensor:
    """(B_local, D) -> (B_global, D), in rank order, differentiable."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    return _GatherWithGrad.apply(x)


def _global(out: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    image = gather_features(out["image_features"])  # (N, E)
    text = gather_features(out["text_features"])  # (N, E)
    neg = out.get("negative_features")
    neg = gather_features(neg) if neg is not None else None  # (M, E)
    return image, text, neg


def clip_loss(out: dict) -> dict[str, torch.Tensor]:
    """Symmetric InfoNCE (CLIP). Hard-negative captions, when given, are extra candidates for
    each image (NegCLIP); they are not queries themselves."""
    image, text, neg = _global(out)
    scale = out["logit_scale"].exp()
    candidates = text if neg is None else torch.cat([text, neg])  # (N [+M], E)
    logits_per_image = scale * image.float() @ candidates.float().T  # (N, N[+M])
    logits_per_text = scale * text.float() @ image.float().T  # (N, N)
    labels = torch.arange(len(image), device=image.device)
    loss = (F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_text, labels)) / 2
    return {"contrastive_loss": loss}


def siglip_loss(out: dict) -> dict[str, torch.Tensor]:
    """SigLIP: an independent binary decision per image-text pair, summed over candidates and
    averaged over images (Zhai et al., 2023)."""
    image, text, neg = _global(out)
    candidates = text if neg is None else torch.cat([text, neg])
    logits = out["logit_scale"].exp() * image.float() @ candidates.float().T + out["logit_bias"]  # (N, N[+M])
    signs = -torch.ones_like(logits)
    signs[:, : len(image)].fill_diagonal_(1.0)
    loss = -F.logsigmoid(signs * logits).sum() / len(image)
    return {"sigmoid_loss": loss}


LOSSES = {"clip": clip_loss, "siglip": siglip_loss}


def get_loss(name: str):
    if name not in LOSSES:
        raise ValueError(f"unknown loss '{name}' (known: {', '.join(LOSSES)})")
    return LOSSES[name]
