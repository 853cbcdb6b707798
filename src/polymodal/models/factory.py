"""Models from preset names (open_clip's factory idea): `create_model("shapes-cnn-small", texts)`."""

from __future__ import annotations

from typing import Iterable

from ..config import ModelConfig, get_model_config
from ..modalities.text import build_tokenizer
from .aligned import AlignedModel


def create_model(name_or_config: str | ModelConfig, texts: Iterable[str] | None = None, **overrides) -> AlignedModel:
    """Build an untrained model. `texts` (training captions) build the tokenizer of a text tower
    trained from scratch; `overrides` set top-level config fields (e.g. init_logit_bias=-10)."""
    config = name_or_config if isinstance(name_or_config, ModelConfig) else get_model_config(name_or_config)
    for key, value in overrides.items():
        setattr(config, key, value)
    tokenizer = build_tokenizer(config.text, texts)
    return AlignedModel(config, tokenizer)
