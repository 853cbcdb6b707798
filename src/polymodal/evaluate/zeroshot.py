"""Zero-shot classification: class names turned into prompt-template ensembles."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..data.kinds import AttributeTask

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


def attribute_zero_shot(model, image_emb: torch.Tensor, task: AttributeTask) -> dict:
    """Accuracy per attribute of a dataset kind's attribute task (ShapesWorld: colour, shape and
    size of the one-object images, from the 96 object descriptions).

    Two ways to turn the candidate descriptions into a classifier for one attribute:
    - "max" (reported under the attribute's name): the attribute of the best-matching description;
    - "mean_ensemble": CLIP's recipe, one class embedding per value averaged over the other
      attributes ("red" = mean of "a small red circle", "a big red star", ...).
    """
    if not task.images:
        return {}
    combo_emb = class_embeddings(model, task.prompts)  # (K, E)
    images = image_emb[task.images]  # (S, E)
    best = (images @ combo_emb.T).argmax(1).numpy()  # (S,)
    out, mean = {}, {}
    for attribute, names in task.values.items():
        truth = np.array([names.index(v) for v in task.truth[attribute]])
        value_of = np.array([names.index(c[attribute]) for c in task.candidates])  # (K,)
        out[attribute] = float((value_of[best] == truth).mean())
        class_emb = torch.stack([F.normalize(combo_emb[value_of == k].mean(0), dim=-1) for k in range(len(names))])
        mean[attribute] = float((classify(images, class_emb) == truth).mean())
    out["mean_ensemble"] = mean
    out["n"] = len(task.images)
    return out
