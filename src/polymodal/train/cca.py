"""Fit a CCA (linear, kernel or deep) between image and caption features of a dataset directory,
and save it as a model directory that `polymodal eval` and `polymodal index build` load.

Every caption of an image makes one (image, caption) pair; images are decoded once, and each
one's features are computed once whatever its number of captions.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from ..data import load_records
from ..data.pairs import ImageTextPairs
from ..data.schema import DataError, RecordSet
from ..models.classical import CCAEstimator, DeepCCA, KernelCCA, LinearCCA
from ..models.classical.encoder import CCAEncoder
from ..models.classical.features import ImageFeatures, TextFeatures
from ..utils import progress_bar

METHODS = ("linear", "kernel", "deep")


@dataclass(frozen=True)
class CCAFitConfig:
    """One set of options for the CLI and the Python API."""

    data: str
    out: str
    method: str = "linear"  # linear, kernel (Nystroem RBF) or deep (two MLP towers)
    image_features: str = "hog+color"
    text_features: str = "tfidf"
    dim: int = 32
    reg: float = 0.1  # ridge of the linear CCA (kernel: on the Nystroem features; deep: on the towers' outputs)
    landmarks: int = 1000  # kernel only: Nystroem landmarks per view
    steps: int = 1000  # deep only: optimizer steps
    batch_size: int = 1024  # deep only: pairs per step (a covariance estimate needs many)
    image_size: int = 64  # pixels the images are decoded at (a frozen tower's own size wins)
    split: str = "train"
    max_pairs: int | None = None  # a random subset of the pairs, for a quick fit
    weight_power: float = 1.0  # canonical dimensions weighted by correlation**power in the embedding
    strict: bool = False
    seed: int = 0
    device: str = "auto"
    progress: bool = True


def make_estimator(cfg: CCAFitConfig) -> CCAEstimator:
    if cfg.method == "linear":
        return LinearCCA(cfg.dim, cfg.reg)
    if cfg.method == "kernel":
        return KernelCCA(cfg.dim, cfg.reg, landmarks=cfg.landmarks, seed=cfg.seed)
    if cfg.method == "deep":
        return DeepCCA(cfg.dim, steps=cfg.steps, batch_size=cfg.batch_size, reg=cfg.reg, seed=cfg.seed,
                       device=cfg.device, progress=cfg.progress)
    raise ValueError(f"unknown CCA method '{cfg.method}' (choose from {', '.join(METHODS)})")


@dataclass
class CCAFitReport:
    encoder: CCAEncoder
    pairs: int
    images: int
    feature_dims: tuple[int, int]
    fit_seconds: float
    data: RecordSet  # what was read, with its skipped records (`data.skips`)


def training_pairs(cfg: CCAFitConfig, image_size: int) -> tuple[ImageTextPairs, np.ndarray, list[str], RecordSet]:
    """The split's decoded images, and (owner image index, caption) for every pair kept."""
    data = load_records(cfg.data, strict=cfg.strict)
    subset = data.split(cfg.split) if cfg.split in data.splits else None
    if subset is None:
        raise DataError(f"{cfg.data}: no split '{cfg.split}' (has: {', '.join(data.splits) or 'no records'})")
    pairs = ImageTextPairs(subset, image_size, progress=cfg.progress)
    owner = np.array([i for i, r in enumerate(pairs.records) for _ in r.text], dtype=np.int64)
    texts = [t for r in pairs.records for t in r.text]
    if cfg.max_pairs and len(texts) > cfg.max_pairs:
        keep = np.sort(np.random.default_rng(cfg.seed).permutation(len(texts))[:cfg.max_pairs])
        owner, texts = owner[keep], [texts[i] for i in keep]
    return pairs, owner, texts, data


def featurize(cfg: CCAFitConfig, images: torch.Tensor, texts: list[str], image_features: ImageFeatures,
              text_features: TextFeatures, chunk: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """(N, 3, S, S) images and C captions -> (N, Dx) and (C, Dy) features, with progress bars."""
    with progress_bar(cfg.progress) as bar:
        task = bar.add_task(f"image features ({image_features.spec})", total=len(images))
        parts = []
        for i in range(0, len(images), chunk):
            parts.append(image_features(images[i:i + chunk]))
            bar.advance(task, len(parts[-1]))
        text_features.fit(texts)
        task = bar.add_task(f"text features ({text_features.spec})", total=len(texts))
        text_parts = []
        for i in range(0, len(texts), 8 * chunk):
            text_parts.append(text_features(texts[i:i + 8 * chunk]))
            bar.advance(task, len(text_parts[-1]))
    return np.concatenate(parts), np.concatenate(text_parts)


def fit_cca(cfg: CCAFitConfig) -> CCAFitReport:
    """Decode, featurize, fit and save; returns the fitted encoder and what went into it."""
    if cfg.method not in METHODS:
        raise ValueError(f"unknown CCA method '{cfg.method}' (choose from {', '.join(METHODS)})")
    estimator = make_estimator(cfg)
    image_features, text_features = ImageFeatures(cfg.image_features), TextFeatures(cfg.text_features)
    size = image_features.image_size or cfg.image_size
    pairs, owner, texts, data = training_pairs(cfg, size)
    image_x, text_y = featurize(cfg, pairs.images, texts, image_features, text_features)
    started = time.perf_counter()
    if isinstance(estimator, DeepCCA):
        estimator.fit(image_x[owner], text_y)  # the step loop shows its own bar
    else:
        with progress_bar(cfg.progress, count=False) as bar:
            bar.add_task(f"fitting {cfg.method} CCA on {len(texts)} pairs", total=None)
            estimator.fit(image_x[owner], text_y)
    seconds = time.perf_counter() - started
    encoder = CCAEncoder(estimator, image_features, text_features, size, cfg.weight_power)
    encoder.save(cfg.out)
    return CCAFitReport(encoder, len(texts), len(pairs), (image_x.shape[1], text_y.shape[1]), seconds, data)
