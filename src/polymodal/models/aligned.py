"""The coordinated representation: one tower per modality, projected into one L2-normalised
space, with a learnable temperature (and a bias for the SigLIP loss)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from ..config import ModelConfig
from ..modalities.audio import build_audio_tower
from ..modalities.image import ImageNormalize, build_image_tower, resize_and_crop
from ..modalities.text import Tokenizer, build_text_tower
from .interface import DualEncoder


def _projection(in_dim: int, out_dim: int, mlp: bool) -> nn.Module:
    if not mlp:
        return nn.Linear(in_dim, out_dim, bias=False)
    return nn.Sequential(nn.Linear(in_dim, 2 * out_dim), nn.GELU(), nn.Linear(2 * out_dim, out_dim))


class AlignedModel(DualEncoder, nn.Module):
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
        if config.audio is not None:  # a third tower into the same space (ImageBind-style binding)
            self.audio_tower = build_audio_tower(config.audio)
            self.audio_proj = _projection(self.audio_tower.output_dim, config.embed_dim, mlp=False)
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

    def audio_features(self, waves: torch.Tensor, lengths: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """(B, N) 16 kHz waveforms, zero-padded, and their (B,) lengths in samples -> (B, E)."""
        x = self.audio_proj(self.audio_tower(waves, lengths).pooled)
        return F.normalize(x, dim=-1) if normalize else x

    @property
    def modalities(self) -> tuple[str, ...]:
        return ("image", "text") if self.config.audio is None else ("image", "text", "audio")

    # -- the common interface (raw inputs: `DualEncoder`) -----------------------------------------

    def _to_uint8(self, image: Image.Image) -> np.ndarray:
        """PIL image -> (3, S, S) uint8, resized and centre-cropped."""
        return resize_and_crop(image, self.config.image.image_size)
