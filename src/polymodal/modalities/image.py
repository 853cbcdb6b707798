"""Images: preprocessing and the image towers (a small CNN and a small ViT); reading files is
`image_files` (re-exported here)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch import nn

from ..config import ImageTowerConfig


@dataclass
class EncoderOutput:
    tokens: torch.Tensor  # (B, T, D): a sequence (image regions, text tokens)
    pooled: torch.Tensor  # (B, D_pooled): one vector per sample, projected into the shared space


# Pillow's filters by name; a pretrained checkpoint names its own (see backends.base.ImageSpec).
PIL_FILTERS = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR, "nearest": Image.NEAREST,
               "lanczos": Image.LANCZOS}
RESIZE_MODES = ("shortest", "squash")
RESAMPLERS = ("pil", "torch")


def resize_and_crop(img: Image.Image, size: int, mode: str = "shortest", interpolation: str = "bicubic",
                    resampler: str = "pil", long_side: str = "round", crop_offset: str = "floor") -> np.ndarray:
    """PIL image -> (3, size, size) uint8: the shorter side resized to `size` and the centre kept
    (mode "shortest"), or the whole image squashed to the square ("squash").

    The defaults are polymodal's own models'. The pretrained backends pass their reference
    library's conventions, which differ in three ways that each move pixels by one uint8 step:
    - resampler: "pil" (Pillow: transformers' slow image processors, open_clip's transforms) or
      "torch" (torch's antialiased uint8 interpolation, through torchvision: the fast processors);
    - long_side: "round" (polymodal) or "truncate" (torchvision and transformers: int(size * long / short));
    - crop_offset: "floor" (transformers, polymodal) or "round" (torchvision's CenterCrop)."""
    if img.mode != "RGB":
        img = img.convert("RGB")
    w, h = _resized_size(img.size, size, mode, long_side)
    pixels = _resize_pil(img, w, h, interpolation) if resampler == "pil" else _resize_torch(img, w, h, interpolation)
    half = (lambda d: d // 2) if crop_offset == "floor" else (lambda d: int(round(d / 2.0)))
    top, left = half(h - size), half(w - size)
    return pixels[:, top:top + size, left:left + size].copy()  # C-contiguous, writable


def _resized_size(wh: tuple[int, int], size: int, mode: str, long_side: str) -> tuple[int, int]:
    """(width, height) after resizing, rounded the way the convention does."""
    if mode == "squash":
        return size, size
    w, h = wh
    short, long = min(w, h), max(w, h)
    new_long = round(long * (size / short)) if long_side == "round" else int(size * long / short)
    return (size, new_long) if w <= h else (new_long, size)


def _resize_pil(img: Image.Image, w: int, h: int, interpolation: str) -> np.ndarray:
    if img.size != (w, h):
        img = img.resize((w, h), PIL_FILTERS[interpolation])
    return np.asarray(img, dtype=np.uint8).transpose(2, 0, 1)  # (3, h, w)


def _resize_torch(img: Image.Image, w: int, h: int, interpolation: str) -> np.ndarray:
    # Imported here: torchvision takes seconds to import and only this path needs it. Its resize is
    # the fast processors' own call (antialiased, uint8 in and out on the CPU), so the pixels match.
    from torchvision.transforms.v2 import functional as tvF

    # (3, H, W) over the (H, W, 3) buffer: torch's uint8 kernel reads this layout directly, 10x
    # faster than a contiguous copy (2 against 24 ms for 500x375 -> 224), with the same pixels.
    pixels = torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1)
    pixels = tvF.resize(pixels, [h, w], interpolation=tvF.InterpolationMode(interpolation), antialias=True)
    return pixels.numpy()


class ImageNormalize(nn.Module):
    """uint8 or [0, 1] float (B, 3, H, W) -> normalised float, inside the model so that every
    caller (training, evaluation, export) preprocesses the same way."""

    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.uint8:
            x = x.float() / 255.0
        return (x - self.mean) / self.std


class AttentionPool(nn.Module):
    """CLIP's attention pooling: the mean token, with 2-D position embeddings added to every
    token, attends over the grid. Its weights are shared across positions, so "a red circle"
    learnt at one place is recognised at every other; the position embeddings keep where."""

    def __init__(self, width: int, grid: int, heads: int):
        super().__init__()
        self.pos = nn.Parameter(torch.randn(1, grid * grid + 1, width) * width**-0.5)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.norm = nn.LayerNorm(width)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = torch.cat([tokens.mean(1, keepdim=True), tokens], dim=1) + self.pos  # (B, 1+T, C)
        x = self.norm(x)
        pooled, _ = self.attn(x[:, :1], x, x, need_weights=False)  # (B, 1, C)
        return pooled.squeeze(1)


class CoordinatePool(nn.Module):
    """Each region's features, averaged plain and weighted by the region's x and y in [-1, 1]:
    (B, T, C) -> (B, 3C). What an object is stays bound to where it is, linearly, so "A left of B"
    is one dot product away: a caption vector A (x) -1 + B (x) +1 scores x_B - x_A, positive
    exactly when the caption is true. Attention pooling adds position embeddings to the features
    instead of multiplying, which leaves a bag of contents beside a bag of places (relation-order
    probe 0.74 after 800 steps, against 0.83 with this pool after 900; benchmarks/README.md)."""

    def __init__(self, grid: int):
        super().__init__()
        c = torch.linspace(-1, 1, grid)
        y, x = torch.meshgrid(c, c, indexing="ij")
        self.register_buffer("xy", torch.stack([x.flatten(), y.flatten()], 1), persistent=False)  # (T, 2)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x, y = self.xy[:, :1], self.xy[:, 1:]  # (T, 1) each
        return torch.cat([tokens.mean(1), (tokens * x).mean(1), (tokens * y).mean(1)], dim=-1)  # (B, 3C)


class ConvEncoder(nn.Module):
    """A plain CNN of conv-BN-ReLU stages. Stages halve the resolution until an 8x8 grid, then keep
    it; channels double per stage up to 4x `width`. A stride-2 first stage costs a sixth of a
    stride-1 one on a CPU (measured), for little loss on 64x64 images.

    The pooled vector must keep where each object is (for "left of", "above"), so the grid is not
    simply averaged: it is coordinate-pooled, attention-pooled with position embeddings, or flattened.
    """

    def __init__(self, cfg: ImageTowerConfig):
        super().__init__()
        layers, channels, size = [], 3, cfg.image_size
        for i in range(cfg.layers):
            out = cfg.width * 2 ** min(i, 2)
            stride = (cfg.stem_stride if i == 0 else 2) if size > 8 else 1
            layers += [nn.Conv2d(channels, out, 3, stride, 1, bias=False), nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
            channels, size = out, (size + stride - 1) // stride
        self.body = nn.Sequential(*layers)
        self.grid = min(size, 8)  # inputs larger than the stages reduce are pooled to 8x8
        self.resize = nn.AdaptiveAvgPool2d(self.grid) if size != self.grid else nn.Identity()
        self.width = channels
        if cfg.pool == "attention":
            self.pool = AttentionPool(channels, self.grid, cfg.heads)
            self.output_dim = channels
        elif cfg.pool == "coord":
            self.pool = CoordinatePool(self.grid)
            self.output_dim = 3 * channels
        elif cfg.pool == "flatten":
            self.pool = nn.Flatten(1)
            self.output_dim = channels * self.grid * self.grid
        else:
            raise ValueError(f"unknown pool '{cfg.pool}' (coord, attention or flatten)")

    def forward(self, x: torch.Tensor) -> EncoderOutput:
        fmap = self.resize(self.body(x))  # (B, C, g, g)
        tokens = fmap.flatten(2).transpose(1, 2)  # (B, g*g, C)
        pooled = self.pool(fmap) if isinstance(self.pool, nn.Flatten) else self.pool(tokens)
        return EncoderOutput(tokens=tokens, pooled=pooled)


class ViTEncoder(nn.Module):
    """A small Vision Transformer: patch embedding, class token, pre-norm blocks."""

    def __init__(self, cfg: ImageTowerConfig):
        super().__init__()
        if cfg.image_size % cfg.patch_size:
            raise ValueError(f"image_size {cfg.image_size} is not a multiple of patch_size {cfg.patch_size}")
        n_patches = (cfg.image_size // cfg.patch_size) ** 2
        self.patch = nn.Conv2d(3, cfg.width, cfg.patch_size, cfg.patch_size)
        self.cls = nn.Parameter(torch.zeros(1, 1, cfg.width))
        self.pos = nn.Parameter(torch.randn(1, n_patches + 1, cfg.width) * 0.02)
        block = nn.TransformerEncoderLayer(cfg.width, cfg.heads, 4 * cfg.width, dropout=0.0, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(block, cfg.layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(cfg.width)
        self.width = self.output_dim = cfg.width

    def forward(self, x: torch.Tensor) -> EncoderOutput:
        x = self.patch(x).flatten(2).transpose(1, 2)  # (B, N, D)
        x = torch.cat([self.cls.expand(len(x), -1, -1), x], dim=1) + self.pos  # (B, N+1, D)
        x = self.norm(self.blocks(x))
        return EncoderOutput(tokens=x[:, 1:], pooled=x[:, 0])


IMAGE_TOWERS = {"cnn": ConvEncoder, "vit": ViTEncoder}


def build_image_tower(cfg: ImageTowerConfig) -> nn.Module:
    if cfg.kind not in IMAGE_TOWERS:
        raise ValueError(f"unknown image tower '{cfg.kind}' (known: {', '.join(IMAGE_TOWERS)})")
    return IMAGE_TOWERS[cfg.kind](cfg)
