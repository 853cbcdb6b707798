"""CoCa joint training (Yu et al., 2022): one image tower, two heads. Its pooled vector is projected
into an ordinary `AlignedModel`'s shared space (contrastive loss), and its region tokens are read by
a `Captioner`'s decoder (captioning loss); the tower is one module, owned by the aligned model.

    model = create_coca("shapes-cnn-small", "shapes-captioner-small", captions)
    out = model(images, model.aligned.tokenizer(captions), model.captioner.tokenizer(captions), negatives)
    loss = clip_loss(out)["contrastive_loss"] + weight * caption_loss(out)
    save_coca(model, "runs/coca")    # runs/coca/aligned: the aligned checkpoint; runs/coca: the captioner

On disk the halves are the two ordinary formats, so each loads, indexes and exports as it always
does: `DIR/aligned/` is an aligned checkpoint (`polymodal.load`, `index build`, `export onnx`,
`eval`), `DIR` a captioner checkpoint whose config.json names it (`"aligned": "aligned"`). The
captioner keeps its own copy of the tower's weights, so it loads alone; `load_coca` ties them again.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import CheckpointError
from ...modalities.text import Tokenizer
from ..aligned import AlignedModel
from ..checkpoint import load_checkpoint, save_checkpoint
from ..factory import create_model
from .captioner import Captioner, get_captioner_config, load_captioner, save_captioner

ALIGNED_DIR = "aligned"  # the dual-encoder half, inside the joint checkpoint


class CocaModel(nn.Module):
    """An aligned model and a captioner sharing the aligned model's image tower."""

    def __init__(self, aligned: AlignedModel, captioner: Captioner):
        super().__init__()
        if dataclasses.asdict(aligned.config.image) != dataclasses.asdict(captioner.config.image):
            raise ValueError("the captioner's image tower config differs from the aligned model's")
        captioner.image_tower = aligned.image_tower  # one tower: both losses train it
        captioner.normalize = aligned.normalize
        self.aligned, self.captioner = aligned, captioner

    def forward(self, images: torch.Tensor, text: torch.Tensor, caption_ids: torch.Tensor | None = None,
                negatives: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """images (B, 3, S, S); text (B, L) aligned-tokenizer ids; caption_ids (B, L') captioner ids
        (None: contrastive terms only); negatives (M, L) -> the contrastive losses' dict, plus
        the captioner's "logits" (B, L'-1, V) and "targets" (B, L'-1). The tower runs once."""
        aligned = self.aligned
        features = aligned.image_tower(aligned.normalize(images))
        image_features = F.normalize(aligned.image_proj(features.pooled), dim=-1)  # (B, E)
        out = aligned.contrastive_outputs(image_features, text, negatives)
        if caption_ids is not None:
            out.update(self.captioner.caption_outputs(self.captioner.regions(features.tokens), caption_ids))
        return out


def create_coca(aligned: str, captioner: str, captions: Sequence[str], **captioner_overrides) -> CocaModel:
    """An untrained joint model: the aligned preset as `create_model` builds it (first, so its
    initial weights do not depend on the captioner), and the captioner preset's decoder with a
    tokenizer trained on `captions`; the captioner preset's own image tower is not used."""
    aligned_model = create_model(aligned, texts=captions)
    config = dataclasses.replace(get_captioner_config(captioner), image=aligned_model.config.image,
                                 **captioner_overrides)
    tokenizer = Tokenizer.train(captions, config.vocab_size, config.context_length)
    return CocaModel(aligned_model, Captioner(config, tokenizer))


def save_coca(model: CocaModel, directory: str | Path, extra: dict | None = None) -> Path:
    """The aligned half to `directory/aligned`, then the captioner (naming it) to `directory`."""
    directory = Path(directory)
    save_checkpoint(model.aligned, directory / ALIGNED_DIR, extra)
    return save_captioner(model.captioner, directory, {**(extra or {}), "aligned": ALIGNED_DIR})


def load_coca(directory: str | Path, device: str = "cpu") -> CocaModel:
    """Both halves of a joint checkpoint, the captioner's tower tied to the aligned model's again."""
    directory = Path(directory)
    captioner = load_captioner(directory)
    meta = json.loads((directory / "config.json").read_text())
    if "aligned" not in meta:
        raise CheckpointError(f"{directory}: a captioner trained alone (its config.json names no aligned half)")
    return CocaModel(load_checkpoint(directory / meta["aligned"]), captioner).to(device).eval()
