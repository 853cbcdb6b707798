"""Models from preset names (open_clip's factory idea): `create_model("shapes-cnn-small", texts)`."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

from ..config import ModelConfig, get_model_config, replace_fields
from ..errors import ConfigError
from ..modalities.text import build_tokenizer
from .aligned import AlignedModel


def create_model(name_or_config: str | ModelConfig, texts: Iterable[str] | None = None, lock_image: bool = False,
                 lock_text: bool = False, **overrides) -> AlignedModel:
    """Build an untrained model. `texts` (training captions) build the tokenizer of a text tower
    trained from scratch; `overrides` set top-level config fields (e.g. init_logit_bias=-10);
    `lock_text` locks a pretrained text tower (see `lock_pretrained_towers`)."""
    config = name_or_config if isinstance(name_or_config, ModelConfig) else get_model_config(name_or_config)
    config = lock_pretrained_towers(replace_fields(config, overrides), lock_image, lock_text, name_or_config)
    tokenizer = build_tokenizer(config.text, texts)
    return AlignedModel(config, tokenizer)


def lock_pretrained_towers(config: ModelConfig, image: bool, text: bool, name="the model") -> ModelConfig:
    """A preset's towers start from random weights, except the bundled MiniLM text tower: locking
    that one is LiT (the tower frozen, its new projection trained). Locking a tower that starts
    random would train against fixed noise, so it is refused."""
    scratch = [side for side, lock in (("image", image), ("text", text and config.text.kind != "minilm")) if lock]
    if scratch:
        raise ConfigError(f"--lock-{scratch[0]}: the {scratch[0]} tower of {name} is trained from scratch, so "
                          f"locking it would freeze random weights; lock a pretrained model (hf:, open_clip:) "
                          f"or a trained checkpoint directory")
    return replace(config, text=replace(config.text, locked=True)) if text else config
