"""Learned-model scores of generated images, beside the exact checker (issue 13): the Fréchet
distance between generated and real images in an aligned model's image space (FID's formula, with
a polymodal tower instead of Inception, which cannot be downloaded here), and CLIP-score and
R-precision of each image against its prompt under the same aligned model.

Written by hand because each is a few lines of linear algebra on embeddings; torchmetrics' FID
would add a dependency to wrap the same `sqrtm`.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import linalg


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^1/2) between two sets of feature rows."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root, _ = linalg.sqrtm(cov_a @ cov_b, disp=False)
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * root.real))


def clip_score(model, images, prompts: list[str]) -> float:
    """CLIP-score (Hessel et al., 2021): 100 x the mean of max(cosine(image, its prompt), 0)."""
    cos = (model.encode_image(images) * model.encode_text(prompts)).sum(-1)  # (N,)
    return float(100 * cos.clamp(min=0).mean())


def r_precision(model, images, prompts: list[str]) -> float:
    """The fraction of images whose own prompt is the nearest, in the aligned space, among all the
    distinct prompts of the set (a prompt shared by several images counts for each)."""
    texts = sorted(set(prompts))
    sims = model.encode_image(images) @ model.encode_text(texts).T  # (N, T)
    truth = torch.tensor([texts.index(p) for p in prompts])
    return float((sims.argmax(-1) == truth).float().mean())
