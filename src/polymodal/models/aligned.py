"""The coordinated representation: one tower per modality, projected into one L2-normalised
space, with a learnable temperature (and a bias for the SigLIP loss)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from ..config import ModelConfig
from ..modalities.image import ImageNormalize, build_image_tower, image_to_uint8, load_image
from ..modalities.text import Tokenizer, build_text_tower

ImageInput = torch.Tensor | Sequence[Image.Image | str | Path]


def _projection(in_dim: int, out_dim: int, mlp: bool) -> nn.Module:
    if not mlp:
        return nn.Linear(in_dim, out_dim, bias=False)
    return nn.Sequential(nn.Linear(in_dim, 2 * out_dim), nn.GELU(), nn.Linear(2 * out_dim, out_dim))


class AlignedModel(nn.Module):
    """CLIP-style dual encoder.

    `forward(images, text_ids)` returns the dict that the losses take; `encode_image` /
    `encode_text` accept raw inputs (PIL images or paths, strings) as well as tensors.
    """

    def __init__(self, config: ModelConfig, tokenizer: Tokenizer):
        super().__init__()
        self.config = config
        self.tokenizer = tokenizer
        self.normalize = ImageNormalize(config.image.mean, config.image.std)
        self.image_tower = build_image_tower(config.image)
        self.text_tower = build_text_tower(config.text, tokenizer.vocab_size)
        self.image_proj = _projection(self.image_tower.output_dim, config.embed_dim, mlp=False)
        # A locked pretrained tower gets an MLP head: a linear map alone cannot re-arrange its space.
        self.text_proj = _projection(self.text_tower.output_dim, config.embed_dim, mlp=config.text.locked)
        self.logit_scale = nn.Parameter(torch.tensor(float(config.init_logit_scale)))
        bias = config.init_logit_bias
        self.logit_bias = nn.Parameter(torch.tensor(float(bias))) if bias is not None else None
        # What made this model (set by the loader); indexes record it to refuse a different model.
        self.model_id = "untrained"

    # -- tensors in, features out ---------------------------------------------------------------

    def image_features(self, images: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """(B, 3, H, W) uint8 or float in [0, 1] -> (B, E)."""
        x = self.image_proj(self.image_tower(self.normalize(images)).pooled)
        return F.normalize(x, dim=-1) if normalize else x

    def text_features(self, ids: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """(B, L) token ids -> (B, E)."""
        x = self.text_proj(self.text_tower(ids).pooled)
        return F.normalize(x, dim=-1) if normalize else x

    def forward(self, images: torch.Tensor, text: torch.Tensor, negatives: torch.Tensor | None = None) -> dict:
        out = {
            "image_features": self.image_features(images),  # (B, E)
            "text_features": self.text_features(text),  # (B, E)
            "logit_scale": self.logit_scale.clamp(max=math.log(100)),
        }
        if negatives is not None:
            out["negative_features"] = self.text_features(negatives)  # (M, E)
        if self.logit_bias is not None:
            out["logit_bias"] = self.logit_bias
        return out

    # -- raw inputs ------------------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return self.logit_scale.device

    @property
    def embed_dim(self) -> int:
        return self.config.embed_dim

    def preprocess(self, images: Sequence[Image.Image | str | Path]) -> torch.Tensor:
        """PIL images or paths -> (B, 3, S, S) uint8, resized and centre-cropped."""
        size = self.config.image.image_size
        arrays = [image_to_uint8(im if isinstance(im, Image.Image) else load_image(im), size) for im in images]
        return torch.from_numpy(np.stack(arrays))

    @torch.inference_mode()
    def encode_image(self, images: ImageInput, batch_size: int = 256) -> torch.Tensor:
        """Images (tensor batch, PIL images or paths) -> (B, E) unit vectors."""
        if not isinstance(images, torch.Tensor):
            images = self.preprocess(images)
        self.eval()
        chunks = [self.image_features(images[i:i + batch_size].to(self.device)).float()
                  for i in range(0, len(images), batch_size)]
        return torch.cat(chunks)

    @torch.inference_mode()
    def encode_text(self, texts: Sequence[str] | torch.Tensor, batch_size: int = 512) -> torch.Tensor:
        """Strings (or token ids) -> (B, E) unit vectors."""
        if isinstance(texts, str):
            texts = [texts]
        for t in texts if not isinstance(texts, torch.Tensor) else []:
            if not t.strip():
                raise ValueError("empty text: every caption needs at least one word")
        self.eval()
        if isinstance(texts, torch.Tensor):
            return torch.cat([self.text_features(texts[i:i + batch_size].to(self.device)).float()
                              for i in range(0, len(texts), batch_size)])
        # Batches of similar length waste little on padding; the order is restored at the end.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = torch.empty(len(texts), self.config.embed_dim)
        for i in range(0, len(texts), batch_size):
            rows = order[i:i + batch_size]
            ids = self.tokenizer([texts[r] for r in rows]).to(self.device)
            out[rows] = self.text_features(ids).float().cpu()
        return out

    @torch.inference_mode()
    def similarity(self, images: ImageInput, texts: Sequence[str], softmax: bool = False) -> torch.Tensor:
        """(I, T) cosine similarities; with `softmax`, each image's probabilities over the texts."""
        sims = self.encode_image(images) @ self.encode_text(texts).T
        if softmax:
            return (self.logit_scale.exp().clamp(max=100) * sims).softmax(dim=-1)
        return sims
