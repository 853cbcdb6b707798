"""Few-shot adaptation on frozen embeddings: a linear probe, a nearest-prototype classifier and a
Tip-Adapter-style cache classifier, and learning curves of each against zero-shot.

Every classifier takes unit embeddings `(N, E)` and integer labels; `learning_curve` draws K shots
per class from a pool several times (seeds) and scores each classifier on a fixed test set. The
embeddings come from any aligned model (`shapes_attribute_embeddings`: one-object ShapesWorld
images and the zero-shot text classifier of an attribute) or from features with no text at all
(`digits_embeddings`: scikit-learn's bundled 8x8 digits; zero-shot is not defined there).

Tip-Adapter (Zhang et al., 2022, training-free form): logits = zero-shot logits
+ alpha * exp(-beta * (1 - f @ keys.T)) @ one_hot(values). alpha and beta are chosen on the
support set itself, by leave-one-out accuracy (each support image classified with its own cache
entry removed); alpha = 0 (plain zero-shot) is in the grid, and ties go to the smaller alpha, so
the cache is trusted only as far as the support set shows it helps. The test set is never seen.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.linear_model import LogisticRegression

from ..data.pairs import ImageTextPairs
from ..data.schema import DataError
from ..data.synthetic.shapes import ATTRIBUTE_VALUES, object_prompts
from ..evaluate.zeroshot import class_embeddings

SHOTS = (1, 2, 4, 8, 16)
# Zero-shot logits are cosines x 100 (CLIP's scale). Tip-Adapter's own grid (alpha up to ~10)
# suits CLIP, whose class cosines differ by a few hundredths; a small model trained on one world
# separates its classes by tenths, so the grid runs on to alpha = 128.
ALPHAS = (0.0, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0)
BETAS = (1.0, 2.0, 5.0, 10.0)
ZERO_SHOT_SCALE = 100.0


def _unit(x) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


class LinearProbe:
    """Logistic regression on the embeddings (CLIP's linear-probe protocol, scikit-learn's lbfgs)."""

    name = "linear_probe"

    def __init__(self, C: float = 1.0, max_iter: int = 1000):
        self.model = LogisticRegression(C=C, max_iter=max_iter)

    def fit(self, x, y) -> LinearProbe:
        self.model.fit(_unit(x), y)
        return self

    def predict(self, x) -> np.ndarray:
        return self.model.predict(_unit(x))


class PrototypeClassifier:
    """Nearest class mean by cosine similarity (prototypical networks on a frozen encoder)."""

    name = "prototype"

    def fit(self, x, y) -> PrototypeClassifier:
        x, y = _unit(x), np.asarray(y)
        self.classes = np.unique(y)
        self.prototypes = _unit(np.stack([x[y == c].mean(0) for c in self.classes]))  # (K, E)
        return self

    def predict(self, x) -> np.ndarray:
        return self.classes[(_unit(x) @ self.prototypes.T).argmax(1)]


class TipAdapter:
    """Zero-shot text classifier `(K, E)` plus a cache of few-shot image keys with one-hot values;
    `fit` builds the cache and picks (alpha, beta) by leave-one-out accuracy on the support set."""

    name = "tip_adapter"

    def __init__(self, text_classifier, alphas: Sequence[float] = ALPHAS, betas: Sequence[float] = BETAS):
        self.text_classifier = _unit(text_classifier)  # (K, E)
        self.alphas, self.betas = alphas, betas
        self.alpha, self.beta = 0.0, 1.0

    def fit(self, x, y) -> TipAdapter:
        self.keys = _unit(x)  # (S, E)
        self.values = np.eye(len(self.text_classifier), dtype=np.float32)[np.asarray(y)]  # (S, K)
        zero_shot = ZERO_SHOT_SCALE * self.keys @ self.text_classifier.T  # (S, K)
        affinity = self.keys @ self.keys.T  # (S, S)
        own = np.eye(len(self.keys), dtype=bool)
        best = -1.0
        # Grid ordered by alpha, then beta: a later setting must be strictly better to win.
        for alpha, beta in itertools.product(self.alphas, self.betas):
            cache = np.where(own, 0.0, np.exp(-beta * (1.0 - affinity))) @ self.values  # (S, K), self left out
            accuracy = float(((zero_shot + alpha * cache).argmax(1) == np.asarray(y)).mean())
            if accuracy > best + 1e-9:
                best, self.alpha, self.beta = accuracy, alpha, beta
        self.support_accuracy = best
        return self

    def logits(self, x) -> np.ndarray:
        f = _unit(x)  # (N, E)
        cache = np.exp(-self.beta * (1.0 - f @ self.keys.T)) @ self.values  # (N, K)
        return ZERO_SHOT_SCALE * f @ self.text_classifier.T + self.alpha * cache

    def predict(self, x) -> np.ndarray:
        return self.logits(x).argmax(1)


def zero_shot_predict(x, text_classifier) -> np.ndarray:
    return (_unit(x) @ _unit(text_classifier).T).argmax(1)


def sample_support(labels, shots: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of `shots` examples of every class (fewer where a class has fewer)."""
    labels = np.asarray(labels)
    picks = [rng.choice(np.flatnonzero(labels == c), min(shots, int((labels == c).sum())), replace=False)
             for c in np.unique(labels)]
    return np.concatenate(picks)


@dataclass
class EmbeddedTask:
    """A classification task on embeddings: a pool to draw shots from and a fixed test set."""

    name: str
    class_names: list[str]
    pool_x: np.ndarray  # (P, E)
    pool_y: np.ndarray  # (P,)
    test_x: np.ndarray  # (T, E)
    test_y: np.ndarray  # (T,)
    text_classifier: np.ndarray | None = None  # (K, E) zero-shot class embeddings; None: no text


def learning_curve(task: EmbeddedTask, shots: Sequence[int] = SHOTS, seeds: Sequence[int] = (0, 1, 2, 3, 4),
                   progress=None) -> dict:
    """Test accuracy of each classifier at each shot count over `seeds` draws of the support set:
    {"zero_shot": acc or None, "methods": {name: {shots: {"mean", "std", "runs"}}}, "chance": 1/K}."""
    methods = {"linear_probe": LinearProbe, "prototype": PrototypeClassifier}
    if task.text_classifier is not None:
        methods["tip_adapter"] = lambda: TipAdapter(task.text_classifier)
    runs: dict[str, dict[int, list[float]]] = {m: {k: [] for k in shots} for m in methods}
    chosen: dict[int, list[tuple[float, float]]] = {k: [] for k in shots}
    for k, seed in itertools.product(shots, seeds):
        support = sample_support(task.pool_y, k, np.random.default_rng([seed, k]))
        for name, make in methods.items():
            clf = make().fit(task.pool_x[support], task.pool_y[support])
            runs[name][k].append(float((clf.predict(task.test_x) == task.test_y).mean()))
            if name == "tip_adapter":
                chosen[k].append((clf.alpha, clf.beta))
        if progress is not None:
            progress()
    zero_shot = None
    if task.text_classifier is not None:
        zero_shot = float((zero_shot_predict(task.test_x, task.text_classifier) == task.test_y).mean())
    curves = {name: {k: {"mean": float(np.mean(v)), "std": float(np.std(v)), "runs": v} for k, v in per.items()}
              for name, per in runs.items()}
    out = {"task": task.name, "classes": task.class_names, "chance": 1.0 / len(task.class_names),
           "n_test": len(task.test_y), "zero_shot": zero_shot, "methods": curves}
    if task.text_classifier is not None:
        out["tip_adapter_alpha_beta"] = {k: v for k, v in chosen.items()}
    return out


# -- tasks ------------------------------------------------------------------------------------------


def attribute_text_classifier(model, attribute: str) -> tuple[list[str], torch.Tensor]:
    """(values, (K, E)): CLIP's prompt ensemble for one ShapesWorld attribute, the mean of every
    one-object description with that value ("red" = "a small red circle", "a big red star", ...)."""

    values = ATTRIBUTE_VALUES[attribute]
    objects, prompts = object_prompts()
    combos = class_embeddings(model, prompts)  # (96, E)
    value_of = torch.tensor([values.index(o[attribute]) for o in objects])
    return values, torch.stack([F.normalize(combos[value_of == k].mean(0), dim=-1) for k in range(len(values))])


def one_object_images(data, split: str, image_size: int, limit: int | None = None):
    """(uint8 images (N, 3, S, S), records) of the one-object ShapesWorld images of `split`."""

    part = data.split(split)
    part.records = [r for r in part.records if len(r.attributes.get("objects", ())) == 1][:limit]
    if not part.records:
        raise DataError(f"{data.root}: no one-object ShapesWorld images in split '{split}'")
    pairs = ImageTextPairs(part, image_size, progress=False, need_text=False)
    return pairs.images, pairs.records


def shapes_attribute_task(model, data, attribute: str, pool_split: str = "train", test_split: str = "test",
                          pool_limit: int | None = 2000, test_limit: int | None = 2000) -> EmbeddedTask:
    """Classify one attribute (shape, colour, size) of one-object ShapesWorld images from `model`'s
    image embeddings; the zero-shot classifier is the attribute's prompt ensemble."""

    if attribute not in ATTRIBUTE_VALUES:
        raise ValueError(f"unknown ShapesWorld attribute '{attribute}' ({', '.join(ATTRIBUTE_VALUES)})")
    size = model.config.image.image_size
    values, text = attribute_text_classifier(model, attribute)
    parts = []
    for split, limit in ((pool_split, pool_limit), (test_split, test_limit)):
        images, records = one_object_images(data, split, size, limit)
        labels = np.array([values.index(r.attributes["objects"][0][attribute]) for r in records])
        parts.append((model.encode_image(images).numpy(), labels))
    (px, py), (tx, ty) = parts
    return EmbeddedTask(f"shapesworld/{attribute}", values, px, py, tx, ty, text.numpy())


def digits_task(test_fraction: float = 0.5, seed: int = 0) -> EmbeddedTask:
    """scikit-learn's bundled 8x8 digits (offline, made by no polymodal code): the 64 pixels,
    centred on the pool's mean, as the embedding. No text, so no zero-shot classifier."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    px, tx, py, ty = train_test_split(x.astype(np.float32), y, test_size=test_fraction, stratify=y,
                                      random_state=seed)
    mean = px.mean(0, keepdims=True)
    return EmbeddedTask("digits/pixels", [str(d) for d in range(10)], px - mean, py, tx - mean, ty)
