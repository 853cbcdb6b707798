"""Checkpoint directories of polymodal's own models (below both `backends`, which loads them,
and `train`, which writes them): `config.json` + `model.safetensors` (+ `tokenizer.json`, and
`training_state.pt` for --resume). Every file is written under a temporary name and renamed, so
an interrupted save never leaves a half-written checkpoint behind."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..config import ModelConfig
from ..errors import CheckpointError
from ..modalities.text import Tokenizer
from ..utils import atomic_path, write_json
from .aligned import AlignedModel

FORMAT_VERSION = 1


def _saved_state(model: AlignedModel) -> dict[str, torch.Tensor]:
    """Trainable weights and buffers; a locked pretrained tower is left out (it ships in its package)."""
    skip = "text_tower.bert." if model.config.text.kind == "minilm" and model.config.text.locked else None
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()
            if not (skip and k.startswith(skip))}


def save_checkpoint(model: AlignedModel, directory: str | Path, extra: dict | None = None) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with atomic_path(directory / "tokenizer.json") as tmp:
        model.tokenizer.save(tmp)
    with atomic_path(directory / "model.safetensors") as tmp:
        save_file(_saved_state(model), str(tmp), metadata={"format": "polymodal", "version": str(FORMAT_VERSION)})
    meta = {"polymodal_version": FORMAT_VERSION, "model": model.config.to_dict(), **(extra or {})}
    write_json(directory / "config.json", meta)
    return directory


def is_checkpoint(path: str | Path) -> bool:
    path = Path(path)
    return (path / "config.json").is_file() and (path / "model.safetensors").is_file()


def load_checkpoint(directory: str | Path, device: str = "cpu") -> AlignedModel:
    directory = Path(directory)
    if not directory.exists():
        raise CheckpointError(f"{directory}: no such checkpoint directory")
    if not is_checkpoint(directory):
        raise CheckpointError(f"{directory}: not a polymodal checkpoint (needs config.json and model.safetensors)")
    try:
        meta = json.loads((directory / "config.json").read_text())
        config = ModelConfig.from_dict(meta["model"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{directory / 'config.json'}: not a valid polymodal config ({err})") from None
    tokenizer = Tokenizer.from_file(directory / "tokenizer.json", config.text.context_length)
    model = AlignedModel(config, tokenizer)
    try:
        state = load_file(str(directory / "model.safetensors"))
    except Exception as err:  # safetensors raises several types for a damaged file
        raise CheckpointError(f"{directory / 'model.safetensors'}: unreadable weights ({err})") from None
    expected = _saved_state(model).keys()
    missing, unexpected = set(expected) - set(state), set(state) - set(expected)
    if missing or unexpected:
        raise CheckpointError(f"{directory}: weights do not match config.json "
                        f"(missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]})")
    model.load_state_dict(state, strict=False)
    model.model_id = f"polymodal:{directory.resolve()}"
    return model.to(device).eval()
