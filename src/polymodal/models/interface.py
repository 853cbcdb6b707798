"""The common encoder interface that everything `polymodal.load` returns shares.

`EncoderInterface` turns raw inputs (PIL images or paths, strings) into unit vectors over a few
hooks that each model implements; `DualEncoder` implements those hooks, and the training `forward`,
for any PyTorch dual encoder with `image_features` / `text_features` / `logit_scale` /
`logit_bias` (polymodal's own `AlignedModel` and the pretrained backends alike).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..modalities.audio import pad_or_cut
from ..modalities.audio_files import load_audio
from ..modalities.image_files import load_image


class EncoderInterface:
    """`preprocess`, `encode_image`, `encode_text`, `similarity` and `embed_dim` over the hooks
    `_to_uint8(PIL image) -> (3, S, S) uint8`, `_embed_pixels(uint8 (B, 3, S, S)) -> (B, E)`,
    `_embed_ids((B, L)) -> (B, E)` and `_similarity_scale()`; a model also has `config.embed_dim`
    and `tokenizer` (list[str] -> (B, L) int64 ids)."""

    @property
    def embed_dim(self) -> int:
        return self.config.embed_dim

    def preprocess(self, images: Sequence[Image.Image | str | Path]) -> torch.Tensor:
        """PIL images or paths -> (B, 3, S, S) uint8, resized and cropped the model's way."""
        return torch.from_numpy(np.stack([self._to_uint8(im if isinstance(im, Image.Image) else load_image(im))
                                          for im in images]))

    def encode_image(self, images, batch_size: int = 256) -> torch.Tensor:
        """Images (uint8 or [0, 1] float tensor batch, PIL images or paths) -> (B, E) unit vectors."""
        if not isinstance(images, torch.Tensor):
            images = self.preprocess(images)
        with inference(self):
            chunks = [self._embed_pixels(images[i:i + batch_size]) for i in range(0, len(images), batch_size)]
        return torch.cat(chunks) if chunks else torch.empty(0, self.embed_dim)

    def encode_text(self, texts: Sequence[str] | torch.Tensor, batch_size: int = 512) -> torch.Tensor:
        """Strings (or token ids) -> (B, E) unit vectors."""
        if isinstance(texts, str):
            texts = [texts]
        if isinstance(texts, torch.Tensor):
            with inference(self):
                chunks = [self._embed_ids(texts[i:i + batch_size]) for i in range(0, len(texts), batch_size)]
            return torch.cat(chunks) if chunks else torch.empty(0, self.embed_dim)
        if any(not t.strip() for t in texts):
            raise ValueError("empty text: every caption needs at least one word")
        # Batches of similar length waste little on padding; the order is restored at the end.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = torch.empty(len(texts), self.embed_dim)
        with inference(self):
            for i in range(0, len(texts), batch_size):
                rows = order[i:i + batch_size]
                out[rows] = self._embed_ids(self.tokenizer([texts[r] for r in rows]))
        return out

    def encode_audio(self, audio: Sequence[np.ndarray | str | Path], batch_size: int = 64) -> torch.Tensor:
        """Audio clips ((N,) float32 arrays at 16 kHz, or file paths) -> (B, E) unit vectors."""
        if "audio" not in getattr(self, "modalities", ()):
            raise ValueError(f"{getattr(self, 'model_id', type(self).__name__)}: has no audio tower "
                             "(train one with `polymodal train-audio`)")
        waves = [load_audio(a) if isinstance(a, (str, Path)) else a for a in audio]
        # Batches of similar length waste little on padding; the order is restored at the end.
        order = sorted(range(len(waves)), key=lambda i: len(waves[i]))
        out = torch.empty(len(waves), self.embed_dim)
        with inference(self):
            for i in range(0, len(waves), batch_size):
                rows = order[i:i + batch_size]
                out[rows] = self._embed_waves(*pad_or_cut([waves[r] for r in rows], self.config.audio.max_seconds))
        return out

    def similarity(self, images, texts: Sequence[str], softmax: bool = False) -> torch.Tensor:
        """(I, T) cosine similarities; with `softmax`, each image's probabilities over the texts."""
        sims = self.encode_image(images) @ self.encode_text(texts).T
        return (self._similarity_scale() * sims).softmax(dim=-1) if softmax else sims

    def similarity_audio(self, audio, texts: Sequence[str], softmax: bool = False) -> torch.Tensor:
        """(A, T) cosine similarities of audio clips and texts; with `softmax`, each clip's
        probabilities over the texts (zero-shot audio classification by text prompts)."""
        sims = self.encode_audio(audio) @ self.encode_text(texts).T
        return (self._similarity_scale() * sims).softmax(dim=-1) if softmax else sims


class DualEncoder(EncoderInterface):
    """The hooks and the training `forward` for a PyTorch module with `image_features(images)`,
    `text_features(ids)`, `logit_scale` and `logit_bias` (None without SigLIP's bias)."""

    def forward(self, images: torch.Tensor, text: torch.Tensor, negatives: torch.Tensor | None = None) -> dict:
        """The dict the contrastive losses take (see `polymodal.losses`)."""
        return self.contrastive_outputs(self.image_features(images), text, negatives)

    def contrastive_outputs(self, image_features: torch.Tensor, text: torch.Tensor,
                            negatives: torch.Tensor | None = None) -> dict:
        """`forward` from unit image features (B, E) already computed (CoCa runs its tower once)."""
        out = {
            "image_features": image_features,  # (B, E)
            "text_features": self.text_features(text),  # (B, E)
            "logit_scale": self.logit_scale.clamp(max=math.log(100)),
        }
        if negatives is not None:
            out["negative_features"] = self.text_features(negatives)  # (M, E)
        if self.logit_bias is not None:
            out["logit_bias"] = self.logit_bias
        return out

    @property
    def device(self) -> torch.device:
        return self.logit_scale.device

    def _embed_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.image_features(pixels.to(self.device)).float().cpu()

    def _embed_ids(self, ids: torch.Tensor) -> torch.Tensor:
        return self.text_features(ids.to(self.device)).float().cpu()

    def _embed_waves(self, waves: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self.audio_features(waves.to(self.device), lengths.to(self.device)).float().cpu()

    def lock(self, image: bool = False, text: bool = False) -> None:
        """Freeze a whole tower, its projection included (LiT locks the image side): every child
        module named image* or text*. Pretrained backends name their towers their own way and
        override this; it is the one way to lock a tower."""
        for name, module in self.named_children():
            if (image and name.startswith("image")) or (text and name.startswith("text")):
                module.requires_grad_(False)
                self.locked_towers = [*getattr(self, "locked_towers", []), name]
        self.train(self.training)

    def train(self, mode: bool = True):
        """A locked tower stays in eval mode, so its BatchNorm statistics stay as loaded (as
        open_clip freezes them when it locks a tower)."""
        super().train(mode)
        for name in getattr(self, "locked_towers", []):
            getattr(self, name).eval()
        return self

    def _similarity_scale(self) -> torch.Tensor:
        return self.logit_scale.detach().exp().clamp(max=100).cpu()


@contextlib.contextmanager
def inference(model):
    """Eval mode without autograd inside the block; every submodule gets the train/eval mode it
    had before afterwards, so encoding in the middle of training changes nothing."""
    modes = [(m, m.training) for m in model.modules()] if isinstance(model, torch.nn.Module) else []
    if modes:
        model.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        for m, was_training in modes:
            m.training = was_training
