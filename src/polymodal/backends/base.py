"""What every pretrained backend shares: the checkpoint's image preprocessing (`ImageSpec`) and
`PretrainedModel`, the common encoder interface over a reference model (transformers, open_clip).

Images travel as uint8 (B, 3, S, S) tensors, resized and cropped the checkpoint's way; the
mean/std normalisation happens inside the model, exactly as in `AlignedModel`, so the training
loop, evaluation and ONNX export all feed the same thing.
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from ..errors import CheckpointError
from ..modalities.image import PIL_FILTERS, RESAMPLERS, RESIZE_MODES, ImageNormalize, resize_and_crop
from ..models.interface import DualEncoder
from ..utils import write_json

BACKEND_FILE = "polymodal_backend.json"  # marks a directory written by polymodal for a pretrained model


@dataclass
class ImageSpec:
    """How the checkpoint turns a picture into pixels (its image processor / preprocess config);
    the conventions are those of `resize_and_crop`, which does the work."""

    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    resize: str = "shortest"  # "shortest": shorter side to image_size, then centre crop; "squash": to a square
    interpolation: str = "bicubic"
    # Pillow ("pil": open_clip, transformers' slow processors) or torch ("torch": the fast processors).
    resampler: str = "pil"
    # The centre-crop offset: torchvision (open_clip) rounds (h - s) / 2, transformers floors it.
    crop_offset: str = "round"
    # The longer side after resizing: both libraries truncate; polymodal's own models round.
    long_side: str = "truncate"

    def __post_init__(self):
        if self.resize not in RESIZE_MODES:
            raise ValueError(f"unsupported resize mode '{self.resize}' ({' or '.join(RESIZE_MODES)})")
        if self.interpolation not in PIL_FILTERS:
            raise ValueError(f"unsupported interpolation '{self.interpolation}' ({', '.join(PIL_FILTERS)})")
        if self.resampler not in RESAMPLERS:
            raise ValueError(f"unsupported resampler '{self.resampler}' ({' or '.join(RESAMPLERS)})")
        self.mean, self.std = tuple(self.mean), tuple(self.std)

    def pixels(self, img: Image.Image) -> np.ndarray:
        """PIL image -> (3, S, S) uint8, resized and cropped as the reference library does."""
        return resize_and_crop(img, self.image_size, self.resize, self.interpolation, self.resampler,
                               self.long_side, self.crop_offset)


@dataclass
class BackendConfig:
    """The part of a polymodal `ModelConfig` that the training loop and evaluation read."""

    embed_dim: int
    image: ImageSpec
    init_logit_bias: float | None = None


@contextlib.contextmanager
def _quiet():
    """peft calls a transformers method that transformers 5 deprecates; the warning is not the user's."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        yield


class PretrainedModel(DualEncoder, nn.Module):
    """The common interface and the training `forward` (`DualEncoder`) over a reference model.
    A backend implements `_image_embeds(pixels)` (normalised float pixels -> (B, E) unnormalised),
    `_text_embeds(ids)`, the `logit_scale` / `logit_bias` properties, `lock(image, text)`,
    `add_lora(...)` and `save(directory)`."""

    backend = "?"

    def __init__(self, model: nn.Module, tokenizer, image: ImageSpec, embed_dim: int, model_id: str):
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer  # list[str] -> (B, L) int64 ids
        self.normalize = ImageNormalize(image.mean, image.std)
        self.config = BackendConfig(embed_dim=embed_dim, image=image)
        self.model_id = model_id
        self.lora: dict | None = None  # the LoRA settings once adapters are added

    # -- tensors in, features out ---------------------------------------------------------------

    def image_features(self, images: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """(B, 3, S, S) uint8 or float in [0, 1] -> (B, E)."""
        x = self._image_embeds(self.normalize(images))
        return F.normalize(x, dim=-1) if normalize else x

    def text_features(self, ids: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """(B, L) token ids -> (B, E)."""
        x = self._text_embeds(ids)
        return F.normalize(x, dim=-1) if normalize else x

    def _to_uint8(self, image: Image.Image) -> np.ndarray:
        return self.config.image.pixels(image)

    # -- fine-tuning -----------------------------------------------------------------------------

    def trainable_fraction(self) -> float:
        total = sum(p.numel() for p in self.parameters())
        return sum(p.numel() for p in self.parameters() if p.requires_grad) / max(1, total)

    def _add_lora(self, rank: int, alpha: float, dropout: float, targets: list[str]) -> None:
        """Wrap the reference model in peft LoRA adapters on `targets`; only they train."""
        from peft import LoraConfig, get_peft_model

        config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets)
        with _quiet():
            self.model = get_peft_model(self.model, config)
        self.lora = {"rank": rank, "alpha": alpha, "dropout": dropout, "targets": targets}

    def _load_adapter(self, directory: Path, trainable: bool = False) -> None:
        from peft import PeftModel

        if not (directory / "adapter_config.json").is_file():
            raise CheckpointError(f"{directory}: no LoRA adapters here (adapter_config.json is missing)")
        with _quiet():
            self.model = PeftModel.from_pretrained(self.model, str(directory), is_trainable=trainable)
        cfg = self.model.peft_config["default"]
        self.lora = {"rank": cfg.r, "alpha": cfg.lora_alpha, "dropout": cfg.lora_dropout,
                     "targets": sorted(cfg.target_modules)}

    def merge_lora(self) -> None:
        """Fold the adapters into the base weights (same outputs, no adapter overhead)."""
        if self.lora is None:
            raise ValueError(f"{self.model_id}: has no LoRA adapters to merge")
        self.model = self.model.merge_and_unload()
        self.lora = None

    def _base(self) -> nn.Module:
        """The reference model under any peft wrapper."""
        return self.model.get_base_model() if self.lora is not None else self.model

    def _write_marker(self, directory: Path, info: dict) -> None:
        write_json(directory / BACKEND_FILE, {"backend": self.backend, "image": asdict(self.config.image),
                                              "embed_dim": self.embed_dim, "lora": self.lora, **info})
