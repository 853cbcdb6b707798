"""A CoCa-style captioner: polymodal's image tower, its region tokens kept (not pooled), and a
`TextDecoder` that cross-attends to them, with a tokenizer trained on the captions.

    model = create_captioner("shapes-captioner-small", captions)
    loss = caption_loss(model(images, model.tokenizer(captions)))
    model.caption(images)                                     # greedy, batched
    save_captioner(model, "runs/cap"); model = load_captioner("runs/cap")

BOS/EOS: the tokenizer is polymodal's WordPiece one, which wraps every text as "[CLS] words [SEP]"
with 0 for padding. The decoder reads "[CLS] words" and is taught to predict "words [SEP]": [CLS]
is the start token every caption is decoded from, [SEP] the end (a stop sequence, so it is never
part of a caption), and padding is ignored by the loss.

The CNN's region tokens carry no position of their own (its convolutions are shift-invariant),
so a learnt embedding per region is added before the decoder reads them: "left of" needs where.
This module trains with the captioning loss alone; `coca.py` shares the image tower with an aligned
model and adds CoCa's contrastive loss.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import nn

from ...config import ImageTowerConfig, image_tower_config, replace_fields
from ...errors import CheckpointError
from ...modalities.image import ImageNormalize, build_image_tower, resize_and_crop
from ...modalities.text import Tokenizer
from ...utils import atomic_path, write_json
from .decoder import DecoderConfig, TextDecoder
from .decoding import GenerationConfig, generate

PAD, BOS, EOS = "[PAD]", "[CLS]", "[SEP]"
IGNORE = -100  # targets at padding: skipped by the cross-entropy


@dataclass
class CaptionerConfig:
    image: ImageTowerConfig = field(default_factory=lambda: ImageTowerConfig(
        kind="cnn", image_size=64, width=32, layers=4, pool="coord"))
    width: int = 128  # decoder width
    layers: int = 2  # decoder blocks
    heads: int = 4
    dropout: float = 0.0
    vocab_size: int = 512  # upper bound for the tokenizer trained on the captions
    context_length: int = 48  # tokens per caption, [CLS] and [SEP] included

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> CaptionerConfig:
        data = dict(data)
        return replace_fields(cls(image=image_tower_config(data.pop("image", {}))), data)


# Presets by name (the JSON-file presets in model_configs/ are the aligned models' registry).
PRESETS = {
    "shapes-captioner-small": CaptionerConfig(),
    "shapes-captioner-tiny": CaptionerConfig(image=ImageTowerConfig(kind="cnn", image_size=64, width=16, layers=3,
                                                                    pool="coord"), width=64, layers=1),
}


def get_captioner_config(name: str) -> CaptionerConfig:
    """A preset by name, or a JSON file of CaptionerConfig fields by path."""
    path = Path(name)
    if path.suffix == ".json" and path.is_file():
        return CaptionerConfig.from_dict(json.loads(path.read_text()))
    if name not in PRESETS:
        raise ValueError(f"unknown captioner '{name}' (known: {', '.join(PRESETS)})")
    return PRESETS[name]


def _region_count(tower: nn.Module, cfg: ImageTowerConfig) -> int:
    grid = getattr(tower, "grid", None)  # the CNN's output grid side
    return grid * grid if grid else (cfg.image_size // cfg.patch_size) ** 2


class Captioner(nn.Module):
    def __init__(self, config: CaptionerConfig, tokenizer: Tokenizer):
        super().__init__()
        self.config, self.tokenizer = config, tokenizer
        self.normalize = ImageNormalize(config.image.mean, config.image.std)
        self.image_tower = build_image_tower(config.image)
        width = self.image_tower.width
        self.region_pos = nn.Parameter(torch.randn(1, _region_count(self.image_tower, config.image), width) * 0.02)
        self.region_norm = nn.LayerNorm(width)
        self.decoder = TextDecoder(DecoderConfig(
            vocab_size=tokenizer.vocab_size, width=config.width, layers=config.layers, heads=config.heads,
            max_positions=config.context_length, image_width=width, dropout=config.dropout))
        vocab = tokenizer.tok.get_vocab()
        self.pad_id, self.bos_id, self.eos_id = vocab[PAD], vocab[BOS], vocab[EOS]

    @property
    def device(self) -> torch.device:
        return self.region_pos.device

    def image_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 or [0, 1] images (B, 3, S, S) -> region tokens (B, T, C) with their positions."""
        return self.regions(self.image_tower(self.normalize(images.to(self.device))).tokens)

    def regions(self, tokens: torch.Tensor) -> torch.Tensor:
        """The tower's region tokens (B, T, C) -> what the decoder reads (B, T, C): with their positions."""
        return self.region_norm(tokens + self.region_pos)

    def forward(self, images: torch.Tensor, ids: torch.Tensor) -> dict[str, torch.Tensor]:
        """images (B, 3, S, S); ids (B, L) "[CLS] words [SEP]" padded with 0 ->
        {"logits": (B, L-1, V), "targets": (B, L-1)}: each position predicts the next token."""
        return self.caption_outputs(self.image_tokens(images), ids)

    def caption_outputs(self, image_tokens: torch.Tensor, ids: torch.Tensor) -> dict[str, torch.Tensor]:
        """`forward` from region tokens (B, T, C) already computed (the joint model runs its tower once)."""
        ids = ids.to(self.device)
        inputs, targets = ids[:, :-1], ids[:, 1:].masked_fill(ids[:, 1:] == self.pad_id, IGNORE)
        logits = self.decoder(inputs, image_tokens, attention_mask=inputs != self.pad_id).logits
        return {"logits": logits, "targets": targets}

    def preprocess(self, images) -> torch.Tensor:
        """A uint8 tensor (B, 3, S, S) as it is, or PIL images resized and centre-cropped."""
        if isinstance(images, torch.Tensor):
            return images
        size = self.config.image.image_size
        return torch.from_numpy(np.stack([resize_and_crop(im, size) for im in images]))

    def generation_config(self, config: GenerationConfig | None = None) -> GenerationConfig:
        """`config` with [SEP] as a stop sequence and at most the tokens the positions cover."""
        config = config or GenerationConfig()
        return dataclasses.replace(config, pad_token_id=self.pad_id,
                                   max_new_tokens=min(config.max_new_tokens, self.config.context_length - 1),
                                   stop_sequences=config.stop_sequences + ((self.eos_id,),))

    @torch.no_grad()
    def caption(self, images: torch.Tensor | Sequence[Image.Image], config: GenerationConfig | None = None,
                batch_size: int = 128) -> list[str]:
        """One caption per image (greedy unless `config` says otherwise), `batch_size` at a time."""
        if len(images) == 0:
            return []
        was_training = self.training
        self.eval()
        pixels, config, out = self.preprocess(images), self.generation_config(config), []
        for start in range(0, len(pixels), batch_size):
            bound = self.decoder.bind(self.image_tokens(pixels[start:start + batch_size]))
            rows = generate(bound, [[self.bos_id]] * len(bound.image_tokens), config).tokens
            out += [self.decode(row) for row in rows]
        self.train(was_training)
        return out


    def decode(self, ids: list[int]) -> str:
        # [CLS]/[SEP]/[PAD] are not registered as special in the trained vocabulary, so
        # `skip_special_tokens` would keep them: they are dropped here.
        return self.tokenizer.tok.decode([i for i in ids if i not in (self.pad_id, self.bos_id, self.eos_id)])


def caption_loss(outputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """Next-token cross-entropy over the real tokens (padding ignored)."""
    return F.cross_entropy(outputs["logits"].flatten(0, 1), outputs["targets"].flatten(), ignore_index=IGNORE)


def create_captioner(config: str | CaptionerConfig, captions: Sequence[str], **overrides) -> Captioner:
    """A new captioner with a tokenizer trained on `captions`."""
    config = replace_fields(config if isinstance(config, CaptionerConfig) else get_captioner_config(config),
                            overrides)
    return Captioner(config, Tokenizer.train(captions, config.vocab_size, config.context_length))


def save_captioner(model: Captioner, directory: str | Path, extra: dict | None = None) -> Path:
    """`config.json` + `model.safetensors` + `tokenizer.json`, replacing their namesakes in
    `directory` together (other files there stay)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(directory, merge=True) as staging:
        staging.mkdir()
        save_file(state, str(staging / "model.safetensors"), metadata={"format": "polymodal-captioner"})
        model.tokenizer.save(staging / "tokenizer.json")
        write_json(staging / "config.json", {"kind": "captioner", "captioner": model.config.to_dict(), **(extra or {})})
    return directory


def load_captioner(directory: str | Path, device: str = "cpu") -> Captioner:
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: no such checkpoint directory")
    try:
        meta = json.loads((directory / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{directory}: not a captioner checkpoint ({err.__class__.__name__} "
                              "reading config.json)") from None
    if meta.get("kind") != "captioner":
        raise CheckpointError(f"{directory}: not a captioner checkpoint (config.json has no captioner)")
    config = CaptionerConfig.from_dict(meta["captioner"])
    if not (directory / "tokenizer.json").is_file():
        raise CheckpointError(f"{directory}: tokenizer.json is missing")
    model = Captioner(config, Tokenizer.from_file(directory / "tokenizer.json", config.context_length))
    try:
        model.load_state_dict(load_file(str(directory / "model.safetensors")))
    except Exception as err:  # safetensors raises several types for a damaged or mismatched file
        raise CheckpointError(f"{directory / 'model.safetensors'}: unreadable weights "
                              f"({err.__class__.__name__})") from None
    return model.to(device).eval()
