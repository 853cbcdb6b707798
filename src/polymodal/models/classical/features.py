"""The features a CCA aligns: fixed-length vectors for images and texts.

Images ((B, 3, S, S) uint8 tensors): "pixels" (downsampled RGB), "hog" (scikit-image's histogram
of oriented gradients), "color" (a joint RGB histogram); texts: "tfidf" (scikit-learn, fitted on
the training captions), "minilm" (the bundled all-MiniLM-L6-v2 sentence embedding). Either side:
"tower:DIR" (a trained polymodal model's embeddings, after projection) or "tower-pooled:DIR"
(its tower's pooled output, before projection), frozen. Join several with "+": "hog+color".
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ...config import TextTowerConfig
from ...modalities.minilm import minilm_path
from ...modalities.text import MiniLMText, Tokenizer
from ..checkpoint import load_checkpoint

IMAGE_FEATURES = ("pixels", "hog", "color")
TEXT_FEATURES = ("tfidf", "minilm")
TOWER_PREFIXES = ("tower:", "tower-pooled:")


def _parts(spec: str, known: tuple[str, ...], side: str) -> list[str]:
    parts = [p.strip() for p in spec.split("+") if p.strip()]
    if not parts:
        raise ValueError(f"no {side} features named (choose from {', '.join(known)}, tower:DIR, tower-pooled:DIR)")
    for p in parts:
        if p not in known and not p.startswith(TOWER_PREFIXES):
            raise ValueError(f"unknown {side} features '{p}' (choose from {', '.join(known)}, tower:DIR, "
                             "tower-pooled:DIR; join several with '+')")
        if p.startswith(TOWER_PREFIXES) and not Path(p.split(":", 1)[1]).is_dir():
            raise ValueError(f"{p.split(':', 1)[1]}: no such polymodal model directory (for {side} features '{p}')")
    # A tower by its absolute path, so that the saved CCA model loads from any directory.
    return [f"{p.split(':', 1)[0]}:{Path(p.split(':', 1)[1]).resolve()}" if p.startswith(TOWER_PREFIXES) else p
            for p in parts]


class FrozenTower:
    """A trained polymodal model used as a fixed feature extractor."""

    def __init__(self, spec: str):
        kind, path = spec.split(":", 1)
        self.pooled = kind == "tower-pooled"
        self.model = load_checkpoint(path)

    @property
    def image_size(self) -> int:
        return self.model.config.image.image_size

    @torch.no_grad()
    def images(self, images: torch.Tensor) -> np.ndarray:
        m = self.model
        if images.shape[-1] != self.image_size:
            images = F.interpolate(images.float() / 255, size=self.image_size, mode="bilinear", antialias=True)
        if not self.pooled:
            return m.encode_image(images).numpy()
        return m.image_tower(m.normalize(images)).pooled.float().numpy()  # (B, width)

    @torch.no_grad()
    def texts(self, texts: list[str]) -> np.ndarray:
        m = self.model
        if not self.pooled:
            return m.encode_text(texts).numpy()
        return m.text_tower(m.tokenizer(texts)).pooled.float().numpy()  # (B, width)


class ImageFeatures:
    """(B, 3, S, S) uint8 images -> (B, D) float32 features, the parts of `spec` side by side."""

    def __init__(self, spec: str = "hog", pixel_size: int = 16, color_bins: int = 4):
        self.parts = _parts(spec, IMAGE_FEATURES, "image")
        self.spec, self.pixel_size, self.color_bins = "+".join(self.parts), pixel_size, color_bins
        self.towers = {p: FrozenTower(p) for p in self.parts if p.startswith(TOWER_PREFIXES)}

    def state(self) -> tuple[dict, dict[str, np.ndarray]]:
        return {"spec": self.spec, "pixel_size": self.pixel_size, "color_bins": self.color_bins}, {}

    @classmethod
    def from_state(cls, meta: dict, arrays: dict[str, np.ndarray]) -> ImageFeatures:
        return cls(meta["spec"], meta["pixel_size"], meta["color_bins"])

    @property
    def image_size(self) -> int | None:
        """The input size a frozen tower expects (None: any)."""
        return next((t.image_size for t in self.towers.values()), None)

    def __call__(self, images: torch.Tensor) -> np.ndarray:
        return np.concatenate([self._part(p, images) for p in self.parts], axis=1).astype(np.float32)

    def _part(self, part: str, images: torch.Tensor) -> np.ndarray:
        if part == "pixels":
            small = F.interpolate(images.float() / 255, size=self.pixel_size, mode="area")  # (B, 3, p, p)
            return small.flatten(1).numpy()
        if part == "hog":
            return hog_features(images)
        if part == "color":
            return color_histograms(images, self.color_bins)
        return self.towers[part].images(images)


def hog_features(images: torch.Tensor) -> np.ndarray:
    """(B, 3, S, S) uint8 -> (B, D) HOG descriptors (scikit-image) of the grey images, 8x8 cells."""
    from skimage.color import rgb2gray
    from skimage.feature import hog

    cell = max(images.shape[-1] // 8, 2)
    return np.stack([hog(rgb2gray(im.permute(1, 2, 0).numpy()), orientations=9, pixels_per_cell=(cell, cell),
                         cells_per_block=(2, 2)) for im in images])


def color_histograms(images: torch.Tensor, bins: int) -> np.ndarray:
    """(B, 3, S, S) uint8 -> (B, bins^3) joint RGB histograms, each summing to 1. Written here:
    scikit-image's histograms are per channel, and colour names live in the joint distribution."""
    q = (images.long() * bins) // 256  # (B, 3, S, S) bin of each channel
    cell = (q[:, 0] * bins + q[:, 1]) * bins + q[:, 2]  # (B, S, S) joint bin
    offsets = torch.arange(len(images)).view(-1, 1, 1) * bins**3
    counts = torch.bincount((cell + offsets).flatten(), minlength=len(images) * bins**3)
    return (counts.view(len(images), -1).float() / cell[0].numel()).numpy()


class TextFeatures:
    """Captions -> (B, D) float32 features. TF-IDF learns its vocabulary in `fit`; the others are fixed."""

    def __init__(self, spec: str = "tfidf", max_features: int = 2000):
        self.parts = _parts(spec, TEXT_FEATURES, "text")
        self.spec, self.max_features = "+".join(self.parts), max_features
        self.towers = {p: FrozenTower(p) for p in self.parts if p.startswith(TOWER_PREFIXES)}
        self.tfidf = None

    def fit(self, texts: list[str]) -> TextFeatures:
        if "tfidf" in self.parts:
            from sklearn.feature_extraction.text import TfidfVectorizer

            self.tfidf = TfidfVectorizer(ngram_range=(1, 2), max_features=self.max_features, sublinear_tf=True)
            self.tfidf.fit(texts)
        return self

    def state(self) -> tuple[dict, dict[str, np.ndarray]]:
        meta: dict = {"spec": self.spec, "max_features": self.max_features}
        if self.tfidf is None:
            return meta, {}
        meta["vocabulary"] = {word: int(i) for word, i in self.tfidf.vocabulary_.items()}
        return meta, {"idf": self.tfidf.idf_}

    @classmethod
    def from_state(cls, meta: dict, arrays: dict[str, np.ndarray]) -> TextFeatures:
        from sklearn.feature_extraction.text import TfidfVectorizer

        out = cls(meta["spec"], meta["max_features"])
        if "vocabulary" in meta:
            out.tfidf = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, vocabulary=meta["vocabulary"])
            out.tfidf.idf_ = arrays["idf"]  # scikit-learn's setter for a vectorizer restored from its state
        return out

    def __call__(self, texts: list[str]) -> np.ndarray:
        return np.concatenate([self._part(p, texts) for p in self.parts], axis=1).astype(np.float32)

    def _part(self, part: str, texts: list[str]) -> np.ndarray:
        if part == "tfidf":
            if self.tfidf is None:
                raise ValueError("TF-IDF text features are not fitted: call fit(captions) first")
            return self.tfidf.transform(texts).toarray()
        if part == "minilm":
            return self._minilm(texts)
        return self.towers[part].texts(texts)

    @cached_property
    def _minilm_parts(self):
        cfg = TextTowerConfig(kind="minilm", locked=True, context_length=64)
        return MiniLMText(cfg).eval(), Tokenizer.from_file(minilm_path() / "tokenizer.json", cfg.context_length)

    @torch.no_grad()
    def _minilm(self, texts: list[str]) -> np.ndarray:
        tower, tokenizer = self._minilm_parts
        return torch.cat([tower(tokenizer(texts[i:i + 256])).pooled for i in range(0, len(texts), 256)]).numpy()
