"""A fitted CCA behind polymodal's common model interface: images and texts go through their
features and the CCA into the shared canonical space, L2-normalised, so `polymodal eval`,
`polymodal index build` and `polymodal.load` treat it as any aligned model.

A CCA model directory:
    config.json         {"kind": "cca", "embed_dim", "image_size", "weight_power", "features": {...}}
    features.safetensors  fitted feature state (TF-IDF's idf)
    cca.json, cca.safetensors  the estimator (`CCAEstimator.save`)
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.numpy import load_file, save_file

from ...errors import CheckpointError
from ...modalities.image import resize_and_crop
from ...utils import atomic_path, write_json
from ..interface import EncoderInterface
from .cca import CCAEstimator
from .features import ImageFeatures, TextFeatures

KIND = "cca"
FEATURES_FILE = "features.safetensors"


@dataclass(frozen=True)
class _ImageSpec:
    image_size: int


@dataclass(frozen=True)
class CCAConfig:
    """What evaluation and indexing read from a model's config (as from an aligned model's)."""

    embed_dim: int
    image: _ImageSpec


class CCAEncoder(EncoderInterface):
    """`encode_image` / `encode_text` -> (B, dim) unit vectors in the canonical space. Each canonical
    dimension is weighted by its training correlation to the power `weight_power` before the
    normalisation (Gong et al. 2014: the well-correlated directions should count more in a cosine)."""

    modalities = ("image", "text")

    def __init__(self, estimator: CCAEstimator, image_features: ImageFeatures, text_features: TextFeatures,
                 image_size: int = 64, weight_power: float = 1.0):
        self.estimator, self.image_features, self.text_features = estimator, image_features, text_features
        self.weight_power = weight_power
        self.config = CCAConfig(estimator.dim, _ImageSpec(image_features.image_size or image_size))
        self.model_id = f"cca:{estimator.method}:unsaved"

    # -- the hooks of the common interface ---------------------------------------------------------

    def _to_uint8(self, image: Image.Image) -> np.ndarray:
        return resize_and_crop(image, self.config.image.image_size)

    def _embed_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        return self._unit(self.estimator.transform_x(self.image_features(pixels.cpu()).astype(np.float64)))

    def encode_text(self, texts: Sequence[str] | str, batch_size: int = 4096) -> torch.Tensor:
        """Strings -> (B, dim) unit vectors (the features read strings, not token ids)."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        if any(not t.strip() for t in texts):
            raise ValueError("empty text: every caption needs at least one word")
        chunks = [self._unit(self.estimator.transform_y(self.text_features(texts[i:i + batch_size])
                                                         .astype(np.float64)))
                  for i in range(0, len(texts), batch_size)]
        return torch.cat(chunks) if chunks else torch.empty(0, self.embed_dim)

    def _similarity_scale(self) -> torch.Tensor:
        return torch.tensor(20.0)  # a fixed temperature: only softmax'ed similarities read it

    def _unit(self, variates: np.ndarray) -> torch.Tensor:
        weights = np.clip(self.estimator.correlations_, 0, None) ** self.weight_power  # (dim,)
        z = torch.from_numpy((variates * weights).astype(np.float32))  # (B, dim)
        return torch.nn.functional.normalize(z, dim=-1)

    def eval(self) -> CCAEncoder:
        return self  # no training mode: callers that put models in eval mode can do so

    def to(self, device) -> CCAEncoder:
        return self  # runs on the CPU (numpy); a deep CCA's towers are small

    # -- persistence -------------------------------------------------------------------------------

    def save(self, directory: str | Path) -> Path:
        """Write the model directory; each file appears whole, beside what `directory` holds."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        with atomic_path(directory, merge=True) as staging:
            staging.mkdir()
            self.estimator.save(staging)
            image_meta, _ = self.image_features.state()
            text_meta, text_arrays = self.text_features.state()
            save_file({f"text.{k}": np.ascontiguousarray(v) for k, v in text_arrays.items()},
                      str(staging / FEATURES_FILE))
            write_json(staging / "config.json", {
                "kind": KIND, "method": self.estimator.method, "embed_dim": self.embed_dim,
                "image_size": self.config.image.image_size, "weight_power": self.weight_power,
                "train_correlations": [round(float(c), 6) for c in self.estimator.correlations_],
                "features": {"image": image_meta, "text": text_meta}})
        self.model_id = f"cca:{directory.resolve()}"
        return directory


def is_cca_dir(path: str | Path) -> bool:
    try:
        return json.loads((Path(path) / "config.json").read_text()).get("kind") == KIND
    except (OSError, ValueError, AttributeError):
        return False


def load_cca(directory: str | Path, device: str = "cpu") -> CCAEncoder:
    """The CCA model saved in `directory` (what `polymodal cca fit` writes)."""
    directory = Path(directory)
    try:
        meta = json.loads((directory / "config.json").read_text())
        arrays = load_file(str(directory / FEATURES_FILE))
        text = TextFeatures.from_state(meta["features"]["text"],
                                       {k.removeprefix("text."): v for k, v in arrays.items() if k.startswith("text.")})
        image = ImageFeatures.from_state(meta["features"]["image"], {})
        size, power = int(meta["image_size"]), float(meta["weight_power"])
    except FileNotFoundError as err:
        missing = Path(err.filename).name
        raise CheckpointError(f"{directory}: not a CCA model directory ({missing} is missing)") from None
    except (ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"{directory / 'config.json'}: not a valid CCA model config ({err})") from None
    encoder = CCAEncoder(CCAEstimator.load(directory), image, text, size, power)
    encoder.model_id = f"cca:{directory.resolve()}"
    return encoder
