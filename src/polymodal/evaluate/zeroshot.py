"""Zero-shot classification: class names turned into prompt-template ensembles."""

from __future__ import annotations

import itertools
import random

import numpy as np
import torch
import torch.nn.functional as F

from ..data.synthetic import shapes

DEFAULT_TEMPLATES = ("{}", "a {}", "an image of a {}", "a photo of a {}", "there is a {}")


def class_embeddings(model, prompts_per_class: list[list[str]]) -> torch.Tensor:
    """(K classes) lists of prompts -> (K, E): the normalised mean of each class's prompts."""
    flat = [p for prompts in prompts_per_class for p in prompts]
    emb = model.encode_text(flat)
    out, start = [], 0
    for prompts in prompts_per_class:
        out.append(F.normalize(emb[start:start + len(prompts)].mean(0), dim=-1))
        start += len(prompts)
    return torch.stack(out)


def classify(image_emb: torch.Tensor, class_emb: torch.Tensor) -> np.ndarray:
    return (image_emb @ class_emb.T).argmax(1).numpy()


def zero_shot_accuracy(model, image_emb: torch.Tensor, labels: list[str], class_names: list[str] | None = None,
                       templates=DEFAULT_TEMPLATES) -> dict:
    """Classify images among `class_names` (default: the labels that occur) with `templates`."""
    class_names = class_names or sorted(set(labels))
    emb = class_embeddings(model, [[t.format(c) for t in templates] for c in class_names])
    pred = classify(image_emb, emb)
    truth = np.array([class_names.index(label) for label in labels])
    per_class = {c: float((pred[truth == k] == k).mean()) for k, c in enumerate(class_names) if (truth == k).any()}
    return {"accuracy": float((pred == truth).mean()), "n": len(labels), "per_class": per_class}


ATTRIBUTE_VALUES = {"colour": list(shapes.COLOURS), "shape": list(shapes.SHAPES), "size": list(shapes.SIZES)}


def shapes_object_prompts() -> tuple[list[dict], list[list[str]]]:
    """Every single-object description (size x colour x shape), each in every 1-object template."""
    objects, prompts = [], []
    for size, colour, shape in itertools.product(ATTRIBUTE_VALUES["size"], ATTRIBUTE_VALUES["colour"],
                                                 ATTRIBUTE_VALUES["shape"]):
        obj = {"size": size, "colour": colour, "shape": shape, "x": 0, "y": 0}
        objects.append(obj)
        rng = random.Random(f"{size}{colour}{shape}")
        prompts.append([shapes.describe([obj], [], rng) for _ in range(len(shapes.TRAIN_TEMPLATES[1]) * 2)])
    return objects, prompts


def shapes_zero_shot(model, image_emb: torch.Tensor, records) -> dict:
    """Colour, shape and size accuracy on the single-object images among `records`.

    Two ways to turn the 96 object descriptions into a classifier for one attribute:
    - "max" (reported as colour/shape/size): the attribute of the best-matching description;
    - "mean_ensemble": CLIP's recipe, one class embedding per value averaged over the other
      attributes ("red" = mean of "a small red circle", "a big red star", ...).
    """
    single = [i for i, r in enumerate(records) if len(r.attributes["objects"]) == 1]
    if not single:
        return {}
    objects, prompts = shapes_object_prompts()
    combo_emb = class_embeddings(model, prompts)  # (96, E)
    scores = image_emb[single] @ combo_emb.T  # (S, 96)
    best = scores.argmax(1).numpy()
    out, mean = {}, {}
    for attribute, names in ATTRIBUTE_VALUES.items():
        truth = np.array([names.index(records[i].attributes["objects"][0][attribute]) for i in single])
        value_of = np.array([names.index(o[attribute]) for o in objects])  # (96,)
        out[attribute] = float((value_of[best] == truth).mean())
        class_emb = torch.stack([F.normalize(combo_emb[value_of == k].mean(0), dim=-1) for k in range(len(names))])
        mean[attribute] = float((classify(image_emb[single], class_emb) == truth).mean())
    out["mean_ensemble"] = mean
    out["n"] = len(single)
    return out
