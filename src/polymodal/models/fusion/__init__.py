"""Fusion models for visual question answering: late, early, FiLM, cross-attention, relation network.

    model = create_vqa_model("vqa-rn", vocab, answers)   # preset in model_configs/vqa-rn.json
    save_vqa(model, "runs/rn"); model = load_vqa("runs/rn")
    model.answer(["scene.png"], ["what is the shape of the red object?"])
"""

from __future__ import annotations

import fnmatch
import json
from pathlib import Path

from safetensors.torch import load_file, save_file

from ...config import CONFIG_DIR, replace_fields
from ...data.vqa import QuestionVocab
from ...errors import CheckpointError
from ...utils import atomic_path, write_json
from .models import FUSIONS, FusionConfig, FusionModel, build_fusion_model

PRESET_PREFIX = "vqa-"


def list_vqa_models(pattern: str = "*") -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob(f"{PRESET_PREFIX}*.json") if fnmatch.fnmatch(p.stem, pattern))


def get_fusion_config(name: str) -> FusionConfig:
    """A preset by name ('rn' or 'vqa-rn') or a JSON file by path."""
    path = Path(name)
    if not (path.suffix == ".json" and path.exists()):
        stem = name if name.startswith(PRESET_PREFIX) else PRESET_PREFIX + name
        path = CONFIG_DIR / f"{stem}.json"
        if not path.exists():
            known = ", ".join(n[len(PRESET_PREFIX):] for n in list_vqa_models())
            raise ValueError(f"unknown VQA model '{name}' (known: {known})")
    return FusionConfig.from_dict(json.loads(path.read_text()))


def create_vqa_model(config: str | FusionConfig, vocab: QuestionVocab, answers: list[str], **overrides) -> FusionModel:
    config = replace_fields(config if isinstance(config, FusionConfig) else get_fusion_config(config), overrides)
    model = build_fusion_model(config, len(vocab.tokens), vocab.length, len(answers))
    model.vocab, model.answers = vocab, list(answers)
    return model


def save_vqa(model: FusionModel, directory: str | Path, extra: dict | None = None) -> Path:
    """`config.json` (architecture, question vocabulary, answers) + `model.safetensors`, each atomic."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    meta = {"kind": "vqa", "fusion": model.config.to_dict(), "vocab": model.vocab.to_dict(),
            "answers": model.answers, **(extra or {})}
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(directory / "model.safetensors") as tmp:
        save_file(state, str(tmp))
    write_json(directory / "config.json", meta)
    return directory


def load_vqa(directory: str | Path, device: str = "cpu") -> FusionModel:
    directory = Path(directory)
    cfg_path = directory / "config.json"
    if not cfg_path.is_file():
        raise CheckpointError(f"{directory}: no such VQA checkpoint (config.json missing)")
    meta = json.loads(cfg_path.read_text())
    if meta.get("kind") != "vqa":
        raise CheckpointError(f"{directory}: not a VQA checkpoint (no fusion model in config.json)")
    model = create_vqa_model(FusionConfig.from_dict(meta["fusion"]), QuestionVocab.from_dict(meta["vocab"]),
                             meta["answers"])
    try:
        model.load_state_dict(load_file(str(directory / "model.safetensors")))
    except Exception as err:  # safetensors raises several types for a damaged file
        raise CheckpointError(f"{directory / 'model.safetensors'}: unreadable weights "
                              f"({err.__class__.__name__})") from None
    return model.to(device).eval()


__all__ = ["FUSIONS", "FusionConfig", "FusionModel", "create_vqa_model", "get_fusion_config", "list_vqa_models",
           "load_vqa", "save_vqa"]
