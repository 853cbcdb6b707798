"""Model configuration: dataclasses whose fields explain themselves, and JSON presets.

A preset in `model_configs/NAME.json` holds `{"embed_dim", "image": {...}, "text": {...}}` and
optionally `"audio": {...}`; the weights live elsewhere (a checkpoint directory holds
`config.json` + `model.safetensors`).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from .errors import ConfigError
from .registry import Registry

CONFIG_DIR = Path(__file__).parent / "model_configs"


@dataclass
class ImageTowerConfig:
    kind: str = "cnn"  # "cnn" or "vit"
    image_size: int = 64
    width: int = 64  # CNN: channels of the first stage (doubles per stage); ViT: token width
    layers: int = 4  # CNN: conv stages; ViT: transformer blocks
    stem_stride: int = 2  # CNN only: stride of the first stage (1 keeps full resolution, costs ~4x)
    pool: str = "attention"  # CNN only: "coord" (features x [1, x, y]), "attention" (CLIP's) or "flatten"
    heads: int = 4  # ViT only
    patch_size: int = 8  # ViT only
    # Normalisation applied to [0, 1] pixels before the tower.
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)


@dataclass
class TextTowerConfig:
    # from scratch: "transformer" or "gru" (bidirectional); "minilm-gru": the gru over the bundled
    # MiniLM's frozen word vectors (robust to unseen words); "minilm" (bundled); "bow" (baseline)
    kind: str = "transformer"
    context_length: int = 48
    vocab_size: int = 512  # upper bound for the tokenizer trained on the captions
    width: int = 128
    layers: int = 2
    heads: int = 4
    locked: bool = False  # freeze the tower, train only the projection (LiT)
    pool: str = "mean"  # transformer only: "mean" of all tokens (learns faster, measured) or "cls"


@dataclass
class AudioTowerConfig:
    kind: str = "transformer"  # "transformer" (conv stem + pre-norm blocks), "cnn" (2-D convs over the log-mel) or
    # "crnn" (those convs, then a bidirectional GRU over time)
    features: str = "logmel"  # "logmel" or "mfcc"
    n_mels: int = 64  # log-mel bands (16 kHz audio, 25 ms windows every 10 ms)
    n_mfcc: int = 40  # "mfcc" only: cepstral coefficients kept
    max_seconds: float = 8.0  # longer clips are cut (a spoken caption is 1.5-8 s); a batch pads to its longest
    width: int = 128  # transformer: token width; cnn: channels of the last stage
    layers: int = 3  # transformer blocks (cnn: conv stages, each halving time and frequency)
    heads: int = 4  # transformer only
    # SpecAugment (Park et al. 2019), applied in training only: masks per clip and their widest span.
    freq_masks: int = 2
    freq_mask_width: int = 8  # mel bands
    time_masks: int = 2
    time_mask_width: int = 20  # frames of 10 ms


@dataclass
class ModelConfig:
    embed_dim: int = 128
    image: ImageTowerConfig = field(default_factory=ImageTowerConfig)
    text: TextTowerConfig = field(default_factory=TextTowerConfig)
    audio: AudioTowerConfig | None = None  # a third tower (spoken captions, sounds): see modalities/audio.py
    init_logit_scale: float = 2.659  # log(1/0.07), CLIP's initial temperature
    init_logit_bias: float | None = None  # set (e.g. -10) for the SigLIP loss

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ModelConfig:
        data = {k: v for k, v in data.items() if k != "name"}
        image = image_tower_config(data.pop("image", {}))
        text = replace_fields(TextTowerConfig(), data.pop("text", {}))
        audio = data.pop("audio", None)
        audio = replace_fields(AudioTowerConfig(), audio) if audio is not None else None
        return replace_fields(cls(image=image, text=text, audio=audio), data)


def replace_fields(config, overrides: dict):
    """A copy of the dataclass `config` with `overrides` set. A key it does not have is an error
    that names the closest valid keys: a typo must fail, not pass unnoticed."""
    valid = [f.name for f in fields(config)]
    for key in overrides:
        if key not in valid:
            close = difflib.get_close_matches(key, valid, n=3)
            hint = f"did you mean {', '.join(close)}?" if close else f"valid keys: {', '.join(valid)}"
            raise ConfigError(f"unknown {type(config).__name__} key '{key}' ({hint})")
    return dataclasses.replace(config, **overrides)


def image_tower_config(data: dict) -> ImageTowerConfig:
    """An ImageTowerConfig from its JSON form (lists back to tuples: mean, std)."""
    return replace_fields(ImageTowerConfig(), {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


MODEL_CONFIGS: Registry[Path] = Registry("model")
for _path in sorted(CONFIG_DIR.glob("*.json")):
    if not _path.stem.startswith("vqa-"):  # fusion (VQA) presets: polymodal.models.fusion
        MODEL_CONFIGS.register(_path.stem, _path)


def list_models(pattern: str = "*") -> list[str]:
    """Names of the architecture presets shipped in `model_configs/`."""
    return MODEL_CONFIGS.list(pattern)


def get_model_config(name_or_path: str | Path) -> ModelConfig:
    """A preset by name, or a JSON file by path."""
    path = Path(name_or_path)
    if not (path.suffix == ".json" and path.exists()):
        path = MODEL_CONFIGS.get(str(name_or_path))
    return ModelConfig.from_dict(json.loads(path.read_text()))
