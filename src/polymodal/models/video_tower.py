"""Text <-> video retrieval on an aligned image-text model: a video tower made of the image tower.

Each frame goes through the aligned model's image tower (its pooled features, before the
projection); a learnt embedding says which frame it is; a small transformer lets the frames attend
to each other (`temporal="attention"`), or nothing does (`"mean"`: order-blind, the baseline); the
mean over frames goes through the image projection into the shared space, so clips, images and
captions are compared by one cosine. Without the temporal layers, "moves left" and "moves right"
are the same set of frames: the attention is what can tell them apart.

    model = VideoTextModel(create_model("shapes-cnn-small", texts=captions), frames=8)
    loss = clip_loss(model(clips, model.aligned.tokenizer(captions)))   # clips: (B, T, 3, S, S) uint8
    model.encode_video(clips); model.encode_text(["a red circle moves to the left"])
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .aligned import AlignedModel

TEMPORAL = ("attention", "mean")


class VideoTextModel(nn.Module):
    def __init__(self, aligned: AlignedModel, frames: int, temporal: str = "attention", layers: int = 1,
                 heads: int = 4):
        super().__init__()
        if temporal not in TEMPORAL:
            raise ValueError(f"unknown temporal model {temporal!r}; choose one of {', '.join(TEMPORAL)}")
        self.aligned, self.frames, self.temporal = aligned, frames, temporal
        width = aligned.image_tower.output_dim
        self.frame_position = nn.Parameter(torch.zeros(frames, width))
        nn.init.normal_(self.frame_position, std=0.02)
        block = nn.TransformerEncoderLayer(width, heads, 2 * width, dropout=0.0, batch_first=True, norm_first=True)
        attending = temporal == "attention"
        self.mixer = nn.TransformerEncoder(block, layers, enable_nested_tensor=False) if attending else None

    @property
    def logit_scale(self) -> nn.Parameter:
        return self.aligned.logit_scale

    def video_features(self, clips: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """(B, T, 3, S, S) uint8 -> (B, E)."""
        b, t = clips.shape[:2]
        if t != self.frames:
            raise ValueError(f"clips of {t} frames, but this model reads {self.frames}")
        tower = self.aligned.image_tower(self.aligned.normalize(clips.flatten(0, 1))).pooled  # (B*T, W)
        x = tower.view(b, t, -1)  # (B, T, W)
        if self.mixer is not None:
            x = self.mixer(x + self.frame_position)
        x = self.aligned.image_proj(x.mean(1))  # (B, E)
        return F.normalize(x, dim=-1) if normalize else x

    def forward(self, clips: torch.Tensor, text: torch.Tensor) -> dict:
        """The dict `polymodal.losses.clip_loss` takes, clips in the images' place."""
        return self.aligned.contrastive_outputs(self.video_features(clips), text)

    @torch.inference_mode()
    def encode_video(self, clips: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
        self.eval()
        chunks = [self.video_features(clips[i:i + batch_size]) for i in range(0, len(clips), batch_size)]
        return torch.cat(chunks)

    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        return self.aligned.encode_text(list(texts))
