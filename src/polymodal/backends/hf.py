"""Hugging Face CLIP and SigLIP (transformers) behind the common interface.

Sources: `hf:<repo id>` (the cache, or the hub when it can be reached) and a local model
directory (`config.json` with `model_type` clip or siglip, as `save_pretrained` writes it).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..errors import CheckpointError
from ..utils import write_json
from .base import ImageSpec, PretrainedModel
from .hub import cache_only_when_offline

MODEL_TYPES = ("clip", "siglip")
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]  # the attention projections of both towers
# transformers' PILImageResampling codes
RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic"}


class HFTokenizer:
    """A transformers tokenizer returning (B, L) int64 ids the way the checkpoint was trained:
    SigLIP pads to its full context (its text pooling reads the last position), CLIP to the
    longest caption (its causal attention makes the padding after the end token irrelevant)."""

    def __init__(self, tokenizer, context_length: int, pad_to_context: bool):
        self.tok = tokenizer
        self.context_length = context_length
        self.pad_to_context = pad_to_context

    def __call__(self, texts: list[str]) -> torch.Tensor:
        if isinstance(texts, str):
            texts = [texts]
        padding = "max_length" if self.pad_to_context else "longest"
        return self.tok(list(texts), padding=padding, truncation=True, max_length=self.context_length,
                        return_tensors="pt")["input_ids"]

    def save(self, directory: str | Path) -> None:
        self.tok.save_pretrained(str(directory))


class HFModel(PretrainedModel):
    backend = "hf"

    def __init__(self, model, tokenizer: HFTokenizer, image: ImageSpec, model_id: str, source: str):
        embed_dim = getattr(model.config, "projection_dim", None) or model.config.text_config.hidden_size
        super().__init__(model, tokenizer, image, embed_dim, model_id)
        self.source = source  # what to load the base weights from (an adapter-only save names it)

    def _image_embeds(self, pixels: torch.Tensor) -> torch.Tensor:
        return _pooled(self.model.get_image_features(pixel_values=pixels))

    def _text_embeds(self, ids: torch.Tensor) -> torch.Tensor:
        return _pooled(self.model.get_text_features(input_ids=ids))

    @property
    def logit_scale(self) -> torch.nn.Parameter:
        return self._base().logit_scale

    @property
    def logit_bias(self) -> torch.nn.Parameter | None:
        return getattr(self._base(), "logit_bias", None)

    def lock(self, image: bool, text: bool) -> None:
        """LiT: freeze a whole tower, its projection included."""
        for name, module in self._base().named_children():
            tower = "image" if name.startswith(("vision", "visual")) else "text" if name.startswith("text") else None
            if (tower == "image" and image) or (tower == "text" and text):
                module.requires_grad_(False)

    def add_lora(self, rank: int = 8, alpha: float = 16.0, dropout: float = 0.0) -> None:
        self._add_lora(rank, alpha, dropout, LORA_TARGETS)

    def save(self, directory: Path, extra: dict) -> None:
        """Full weights as a transformers model directory (loadable by transformers too), or the
        LoRA adapters alone beside a note naming the base model."""
        if self.lora is not None:
            self.model.save_pretrained(str(directory / "adapter"))
            self._write_marker(directory, {"base": self.source, **extra})
            return
        self.model.save_pretrained(str(directory))
        self.tokenizer.save(directory)
        _write_processor_config(self.config.image, directory / "preprocessor_config.json")
        self._write_marker(directory, extra)


def _pooled(out) -> torch.Tensor:
    """transformers 4 returns the projected features; 5 returns an output whose pooler_output they are."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def is_hf_dir(path: Path) -> bool:
    try:
        return json.loads((path / "config.json").read_text()).get("model_type") in MODEL_TYPES
    except (OSError, ValueError, AttributeError):
        return False


def load_hf(source: str, model_id: str | None = None) -> HFModel:
    """`source`: a repo id on the hub / in its cache, or a local directory."""
    from transformers import AutoConfig, AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # one bar per weight file is noise for a CLI
    local = Path(source).is_dir()
    with cache_only_when_offline() as online:
        try:
            config = AutoConfig.from_pretrained(source)
            if config.model_type not in MODEL_TYPES:
                raise ValueError(f"{source}: model_type '{config.model_type}' is not supported "
                                 f"(supported: {', '.join(MODEL_TYPES)})")
            model = AutoModel.from_pretrained(source, dtype=torch.float32)
            tokenizer = AutoTokenizer.from_pretrained(source)
            processor = _read_processor_config(source)
            resampler = _reference_resampler(source) if processor else "pil"
        except OSError as err:
            if local:
                raise CheckpointError(f"{source}: not a complete Hugging Face model directory "
                                      f"({_first_line(err)})") from None
            where = "not in the Hugging Face cache" + ("" if online else " and the hub cannot be reached (offline)")
            raise CheckpointError(f"hf:{source}: {where}; download it where there is a network "
                            f"(`hf download {source} --local-dir DIR`) and pass DIR, or point HF_HOME "
                            f"at a cache that holds it") from None
    text_config = config.text_config
    image = _image_spec(processor, config, resampler)
    tok = HFTokenizer(tokenizer, text_config.max_position_embeddings, pad_to_context=config.model_type == "siglip")
    name = model_id or (f"hf:{Path(source).resolve()}" if local else f"hf:{source}")
    return HFModel(model.eval(), tok, image, name, str(Path(source).resolve()) if local else source)


def _first_line(err: Exception) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else err.__class__.__name__


def _read_processor_config(source: str) -> dict:
    from transformers.utils import cached_file

    try:
        path = cached_file(source, "preprocessor_config.json", _raise_exceptions_for_missing_entries=False)
    except OSError:
        path = None
    return json.loads(Path(path).read_text()) if path else {}


def _reference_resampler(source: str) -> str:
    """How transformers' own `AutoImageProcessor` resizes for this checkpoint: "torch" for a fast
    (torchvision) processor, which transformers 5 loads by default where torchvision is installed;
    "pil" for a slow one (Pillow). The two differ by a uint8 step at many pixels."""
    from transformers import AutoImageProcessor
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "now loaded as a fast processor by default" is not the user's business
    try:
        processor = AutoImageProcessor.from_pretrained(source)
    finally:
        hf_logging.set_verbosity(verbosity)
    backend = getattr(processor, "backend", None)  # recent transformers name it; earlier, the class name does
    fast = backend == "torchvision" if isinstance(backend, str) else type(processor).__name__.endswith("Fast")
    return "torch" if fast else "pil"


def _image_spec(proc: dict, config, resampler: str = "pil") -> ImageSpec:
    """The image processor's settings; without a preprocessor_config.json, the model family's defaults."""
    siglip = config.model_type == "siglip"
    size = config.vision_config.image_size
    default_mean = (0.5, 0.5, 0.5) if siglip else (0.48145466, 0.4578275, 0.40821073)
    default_std = (0.5, 0.5, 0.5) if siglip else (0.26862954, 0.26130258, 0.27577711)
    resize = proc.get("size", {"height": size, "width": size} if siglip else {"shortest_edge": size})
    crop = proc.get("do_center_crop", not siglip)
    if "shortest_edge" in resize and crop:
        crop_size = proc.get("crop_size", {"height": size, "width": size})
        side = crop_size["height"] if isinstance(crop_size, dict) else int(crop_size)
        if side != resize["shortest_edge"]:
            raise ValueError(f"resize to {resize['shortest_edge']} then crop to {side} is not supported")
        mode = "shortest"
    elif "height" in resize and not crop:
        side, mode = resize["height"], "squash"
    else:
        raise ValueError(f"unsupported image processor settings: size={resize}, do_center_crop={crop}")
    return ImageSpec(image_size=side, mean=tuple(proc.get("image_mean", default_mean)),
                     std=tuple(proc.get("image_std", default_std)), resize=mode,
                     interpolation=RESAMPLE.get(proc.get("resample", 3), "bicubic"), resampler=resampler,
                     crop_offset="floor")


def _write_processor_config(image: ImageSpec, path: Path) -> None:
    """A preprocessor_config.json that transformers and `_image_spec` both read back."""
    code = {v: k for k, v in RESAMPLE.items()}[image.interpolation]
    cfg = {"image_mean": list(image.mean), "image_std": list(image.std), "resample": code,
           "do_resize": True, "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
           "do_convert_rgb": True}
    if image.resize == "shortest":
        cfg.update(image_processor_type="CLIPImageProcessor", size={"shortest_edge": image.image_size},
                   do_center_crop=True, crop_size={"height": image.image_size, "width": image.image_size})
    else:
        cfg.update(image_processor_type="SiglipImageProcessor", do_center_crop=False,
                   size={"height": image.image_size, "width": image.image_size})
    if image.resampler == "torch":  # "...Fast" loads the torchvision processor in every transformers release
        cfg["image_processor_type"] += "Fast"
    write_json(path, cfg)
