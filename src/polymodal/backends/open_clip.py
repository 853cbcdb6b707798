"""open_clip models behind the common interface.

Sources: `open_clip:<arch>/<pretrained tag>` (weights from open_clip's cache or the hub),
`open_clip:<arch>@<checkpoint file>` (a local state-dict file for that architecture),
`open_clip:hf-hub:<org>/<repo>`, and a local directory holding `open_clip_config.json` + weights
(open_clip's own `local-dir:` layout, which a full fine-tune also writes).
"""

from __future__ import annotations

import logging
import pickle
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from ..errors import CheckpointError
from ..utils import atomic_path, write_json
from .base import ImageSpec, PretrainedModel
from .hub import cache_only_when_offline

CONFIG_FILE = "open_clip_config.json"
WEIGHTS_FILE = "open_clip_model.safetensors"


class OpenClipTokenizer:
    """open_clip's tokenizer: (B, context_length) int64 ids, padded to the full context."""

    def __init__(self, tokenizer):
        self.tok = tokenizer
        self.context_length = tokenizer.context_length
        self.pad_to_context = True

    def __call__(self, texts: list[str]) -> torch.Tensor:
        return self.tok([texts] if isinstance(texts, str) else list(texts)).long()


class OpenClipModel(PretrainedModel):
    backend = "open_clip"

    def __init__(self, model, tokenizer, image: ImageSpec, model_id: str, model_cfg: dict, source: str):
        embed_dim = model_cfg["embed_dim"]
        super().__init__(model, tokenizer, image, embed_dim, model_id)
        self.model_cfg = model_cfg  # the architecture, saved beside fine-tuned weights
        self.source = source

    def _image_embeds(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(pixels)

    def _text_embeds(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model.encode_text(ids)

    @property
    def logit_scale(self) -> nn.Parameter:
        return self._base().logit_scale

    @property
    def logit_bias(self) -> nn.Parameter | None:
        return getattr(self._base(), "logit_bias", None)

    def lock(self, image: bool, text: bool) -> None:
        """LiT through open_clip's own tower locks (whole tower, projection included)."""
        if image:
            self._base().lock_image_tower(unlocked_groups=0)
        if text:
            self._base().lock_text_tower(unlocked_layers=0)

    def add_lora(self, rank: int = 8, alpha: float = 16.0, dropout: float = 0.0) -> None:
        self._add_lora(rank, alpha, dropout, _lora_targets(self.model))

    def save(self, directory: Path, extra: dict) -> None:
        """Full weights in open_clip's local-dir layout, or the LoRA adapters alone."""
        if self.lora is not None:
            self.model.save_pretrained(str(directory / "adapter"))
            self._write_marker(directory, {"base": self.source, **extra})
            return
        state = {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}
        with atomic_path(directory / WEIGHTS_FILE) as tmp:
            save_file(state, str(tmp))
        image = self.config.image
        preprocess = {"size": image.image_size, "mean": list(image.mean), "std": list(image.std),
                      "interpolation": image.interpolation, "resize_mode": image.resize}
        write_json(directory / CONFIG_FILE, {"model_cfg": self.model_cfg, "preprocess_cfg": preprocess})
        self._write_marker(directory, extra)


def _lora_targets(model: nn.Module) -> list[str]:
    """The attention projections, whatever the tower calls them: torch's MultiheadAttention
    (open_clip's own transformer; peft adapts its fused q/k/v and its output projection) or the
    separate Linear layers of a timm or Hugging Face tower inside an `attn` module."""
    found = set()
    for name, module in model.named_modules():
        parent, _, leaf = name.rpartition(".")
        if isinstance(module, nn.MultiheadAttention):
            found.add(leaf)
        elif (isinstance(module, nn.Linear) and parent.endswith("attn")
              and not isinstance(model.get_submodule(parent), nn.MultiheadAttention)):
            found.add(leaf)
    if not found:
        raise ValueError("found no attention projections to put LoRA adapters on")
    return sorted(found)


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:200] if text else err.__class__.__name__


def parse_source(spec: str) -> tuple[str, str | None, str | None]:
    """'ViT-B-32/laion2b_s34b_b79k' -> (arch, tag, None); 'ViT-B-32@/x.pt' -> (arch, None, file);
    'hf-hub:org/repo' or 'local-dir:/d' -> (spec, None, None); 'ViT-B-32' -> random weights."""
    if spec.startswith(("hf-hub:", "local-dir:")):
        return spec, None, None
    if "@" in spec:
        arch, file = spec.split("@", 1)
        return arch, None, file
    arch, _, tag = spec.partition("/")
    return arch, tag or None, None


def is_open_clip_dir(path: Path) -> bool:
    return (path / CONFIG_FILE).is_file()


def load_open_clip(spec: str, model_id: str | None = None) -> OpenClipModel:
    """`spec` as in `parse_source`."""
    import open_clip

    arch, tag, file = parse_source(spec)
    name = f"open_clip:{spec}"
    if file is not None:
        if not Path(file).is_file():
            raise CheckpointError(f"{file}: checkpoint file not found")
        name = f"open_clip:{arch}@{Path(file).resolve()}"
    schema = arch.split(":", 1)[0] if ":" in arch else None
    if schema is None and arch not in open_clip.list_models():
        raise ValueError(f"open_clip: unknown architecture '{arch}' (e.g. {', '.join(open_clip.list_models()[:4])}; "
                         f"all: python -c 'import open_clip; print(open_clip.list_models())')")
    if tag and not open_clip.get_pretrained_cfg(arch, tag):
        tags = open_clip.list_pretrained_tags_by_model(arch)
        raise ValueError(f"open_clip: '{arch}' has no pretrained tag '{tag}' (known: {', '.join(tags) or 'none'})")
    # open_clip reports on the root logger ("no pretrained weights", download errors): we raise instead.
    logging.disable(logging.ERROR)
    try:
        with cache_only_when_offline() as online:
            model, _, _ = open_clip.create_model_and_transforms(arch, pretrained=tag or file, device="cpu",
                                                                precision="fp32")
            tokenizer = open_clip.get_tokenizer(arch)
    except RuntimeError as err:
        if file is None and ("Failed to download" in str(err) or "HF Hub" in str(err)):
            where = "not in the local cache" + ("" if online else " and the hub cannot be reached (offline)")
            raise CheckpointError(f"{name}: weights {where}; download the checkpoint file where there is a "
                            f"network and load it with open_clip:{arch}@/path/to/checkpoint") from None
        if file is None:
            raise
        raise CheckpointError(f"{file}: not a checkpoint for {arch} ({_first_line(err)})") from None
    except (KeyError, ValueError, EOFError, pickle.UnpicklingError) as err:
        raise CheckpointError(f"{file or name}: not a readable checkpoint for {arch} ({_first_line(err)})") from None
    finally:
        logging.disable(logging.NOTSET)
    if schema is None and tag is None and file is None:
        name += " (random weights)"
    model_cfg = open_clip.get_model_config(arch)
    pre = open_clip.get_model_preprocess_cfg(model)
    size = pre.get("size", model.visual.image_size)
    if isinstance(size, (tuple, list)):
        if size[0] != size[1]:
            raise ValueError(f"{name}: non-square input {size} is not supported")
        size = size[0]
    image = ImageSpec(image_size=int(size), mean=tuple(pre["mean"]), std=tuple(pre["std"]),
                      resize=pre.get("resize_mode", "shortest"), interpolation=pre.get("interpolation", "bicubic"),
                      resampler="pil", crop_offset="round", long_side="truncate")  # torchvision on PIL images
    source = f"open_clip:{spec}" if file is None else name
    return OpenClipModel(model.eval(), OpenClipTokenizer(tokenizer), image, model_id or name, model_cfg, source)
