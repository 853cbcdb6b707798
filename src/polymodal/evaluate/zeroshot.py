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


def shapes_attribute_prompts(attribute: str, value: str) -> list[str]:
    """Prompts for one attribute value, ensembled over every value of the other attributes (a
    'red' class embedding averages "a small red circle", "a big red star", ...)."""
    values = {"colour": list(shapes.COLOURS), "shape": list(shapes.SHAPES), "size": list(shapes.SIZES)}
    values[attribute] = [value]
    prompts = []
    for size, colour, shape in itertools.product(values["size"], values["colour"], values["shape"]):
        obj = {"size": size, "colour": colour, "shape": shape, "x": 0, "y": 0}
        prompts.append(shapes.describe([obj], [], random.Random(f"{size}{colour}{shape}")))
    return prompts


def shapes_zero_shot(model, image_emb: torch.Tensor, records) -> dict:
    """Colour, shape and size accuracy on the single-object images among `records`."""
    single = [i for i, r in enumerate(records) if len(r.attributes["objects"]) == 1]
    if not single:
        return {}
    out = {}
    for attribute, names in (("colour", list(shapes.COLOURS)), ("shape", list(shapes.SHAPES)), ("size", list(shapes.SIZES))):
        emb = class_embeddings(model, [shapes_attribute_prompts(attribute, v) for v in names])
        pred = classify(image_emb[single], emb)
        truth = np.array([names.index(records[i].attributes["objects"][0][attribute]) for i in single])
        out[attribute] = float((pred == truth).mean())
    out["n"] = len(single)
    return out
