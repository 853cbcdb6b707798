"""Pretrained backends behind the common encoder interface, and the resolver `polymodal.load` uses.

Sources (see `load_model`):
    hf:<repo id>                         Hugging Face CLIP / SigLIP, CLAP (audio-text), or a
                                         captioning / chat VLM (BLIP, LLaVA, Idefics3 / SmolVLM),
                                         from the cache or the hub
    open_clip:<arch>/<tag>               open_clip with a pretrained tag
    open_clip:<arch>@<file>              open_clip architecture + a local checkpoint file
    open_clip:hf-hub:<org>/<repo>        open_clip model on the hub
    <dir>                                a Hugging Face model directory (clip/siglip, clap, or a VLM),
                                         an open_clip directory (open_clip_config.json), an ONNX
                                         or OpenVINO export, a polymodal fine-tune (full or LoRA adapters), or
                                         a polymodal checkpoint (aligned, or generative: a
                                         captioner or chat model, by the kind in config.json),
                                         or a diffusers text-to-image / text-to-video pipeline
                                         (model_index.json: `polymodal train-generator`'s or
                                         `train-video-generator`'s, or a local Stable Diffusion)

Each backend imports its own library (transformers, open_clip, onnxruntime, peft) inside the
functions that need it: they are optional extras, and slow to import.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import CheckpointError
from ..models.checkpoint import load_checkpoint, save_checkpoint
from ..models.classical.encoder import load_cca
from ..models.generative.captioner import load_captioner
from ..models.generative.chat import load_chat_model
from ..models.generative.diffusion import is_diffusers_pipeline, load_text_to_image
from ..models.generative.video_diffusion import is_text_to_video_pipeline, load_text_to_video
from ..utils import atomic_path
from .base import BACKEND_FILE, PretrainedModel
from .clap import is_clap, is_clap_dir, load_clap
from .hf import is_hf_dir, load_hf
from .hf_vlm import is_hf_vlm, load_hf_vlm
from .onnx import ONNX_FILE
from .open_clip import is_open_clip_dir, load_open_clip
from .openvino import load_export

PREFIXES = ("hf:", "open_clip:")


def is_pretrained_source(name: str | Path) -> bool:
    """Whether `name` is a pretrained model from another library: hf: or open_clip: names, a
    Hugging Face or open_clip model directory, or polymodal's fine-tune of one (LoRA adapters).
    A polymodal checkpoint is not: fine-tuning it is training as usual (its own learning rate)."""
    if str(name).startswith(PREFIXES):
        return True
    path = Path(name)
    if not path.is_dir():
        return False
    return (path / BACKEND_FILE).is_file() or is_hf_dir(path) or is_open_clip_dir(path)


def load_model(source: str | Path, device: str = "cpu", trainable_adapters: bool = False):
    """Whatever `source` names (see the module doc), with the common interface, in eval mode."""
    s = str(source)
    if s.startswith("hf:"):
        if is_clap(s[3:]):
            return load_clap(s[3:]).to(device)
        return load_hf_vlm(s[3:], device) if is_hf_vlm(s[3:]) else load_hf(s[3:]).to(device)
    if s.startswith("open_clip:"):
        return load_open_clip(s[len("open_clip:"):]).to(device)
    path = Path(s)
    if not path.exists():
        raise CheckpointError(f"{s}: no such checkpoint directory (pretrained models are named hf:<repo id>, "
                        f"open_clip:<arch>/<tag> or open_clip:<arch>@<checkpoint file>)")
    if path.is_file():
        raise CheckpointError(f"{s}: a checkpoint file needs its architecture: open_clip:<arch>@{s}")
    marker = _read_marker(path / BACKEND_FILE)
    if marker and marker.get("lora"):
        model = load_model(marker["base"])
        model._load_adapter(path / "adapter", trainable=trainable_adapters)
        model.model_id = f"{model.model_id}+lora:{path.resolve()}"
        return model.to(device)
    if (path / ONNX_FILE).is_file():
        return load_export(path).to(device)  # the engine fastest on this CPU
    if is_text_to_video_pipeline(path):
        return load_text_to_video(path, device)
    if is_diffusers_pipeline(path):
        return load_text_to_image(path, device)
    if is_open_clip_dir(path):
        return load_open_clip(f"local-dir:{path.resolve()}", model_id=f"open_clip:{path.resolve()}").to(device)
    if is_hf_vlm(path):
        return load_hf_vlm(str(path), device)
    if is_hf_dir(path):
        return load_hf(str(path)).to(device)
    if is_clap_dir(path):
        return load_clap(str(path)).to(device)
    by_kind = KIND_LOADERS.get(_checkpoint_kind(path))
    if by_kind:
        return by_kind(path, device)
    return load_checkpoint(path, device)


def load_trainable(source: str, lora: int = 0, lock_image: bool = False, lock_text: bool = False,
                   device: str = "cpu"):
    """A model to fine-tune: full, with a tower locked (LiT), or with fresh LoRA adapters of rank
    `lora` (a LoRA fine-tune named as `source` continues with its own adapters)."""
    model = load_model(source, device, trainable_adapters=True)
    if not hasattr(model, "lock"):
        raise ValueError(f"{source}: an exported ONNX model cannot be trained; fine-tune the model it came from")
    if lora and not hasattr(model, "add_lora"):
        raise ValueError(f"{source}: LoRA is for pretrained models (hf:, open_clip: or their directories)")
    if lora and model.lora is None:
        model.add_lora(rank=lora, alpha=2.0 * lora)
    model.lock(lock_image, lock_text)
    return model


def save_model(model, directory: str | Path, extra: dict | None = None) -> Path:
    """Save any trainable model in its own format; files appear whole or not at all, beside what
    the directory already holds (a training run's metrics and state)."""
    directory = Path(directory)
    if not isinstance(model, PretrainedModel):
        return save_checkpoint(model, directory, extra)
    directory.mkdir(parents=True, exist_ok=True)
    with atomic_path(directory, merge=True) as staging:
        staging.mkdir()
        model.save(staging, extra or {})
    return directory


def merge_lora(source: str | Path, out: str | Path) -> Path:
    """Load a LoRA fine-tune, fold its adapters into the base weights and save the full model."""
    model = load_model(source)
    if getattr(model, "lora", None) is None:
        raise ValueError(f"{source}: not a LoRA fine-tune (written by `polymodal train --lora`)")
    model.merge_lora()
    return save_model(model, out, {"merged_from": str(Path(source).resolve())})


# polymodal's generative checkpoints by the "kind" in their config.json; each loader returns a
# model with `caption(images)` (captioners) and/or `chat(image, messages)` (chat models).
GENERATIVE_LOADERS = {"captioner": load_captioner, "chat": load_chat_model}
# Models of other kinds in a polymodal directory, by the same "kind" (a fitted CCA: `polymodal cca fit`).
KIND_LOADERS = {**GENERATIVE_LOADERS, "cca": load_cca}


def _checkpoint_kind(path: Path) -> str | None:
    marker = _read_marker(path / "config.json")
    return marker.get("kind") if marker else None


def _read_marker(file: Path) -> dict | None:
    if not file.is_file():
        return None
    try:
        return json.loads(file.read_text())
    except ValueError as err:
        raise CheckpointError(f"{file}: not valid JSON ({err})") from None


__all__ = ["is_pretrained_source", "load_model", "load_trainable", "merge_lora", "save_model"]
