"""VQA accuracy, overall and per question type, under the robustness conditions."""

from __future__ import annotations

import torch

from ..data.degrade import blank_images, mask_questions, noise_images
from ..data.vqa import MASK, VQATensors

CONDITIONS = ("clean", "image blanked", "image noised", "question masked")


@torch.no_grad()
def predict(model, data: VQATensors, batch_images: int = 100, condition: str = "clean") -> torch.Tensor:
    """(N, Q) predicted answer ids under `condition`."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    preds = []
    for first in range(0, len(data), batch_images):
        images = data.images[first:first + batch_images]
        questions = data.questions[first:first + batch_images]
        if condition == "image blanked":
            images = blank_images(images)
        elif condition == "image noised":
            images = noise_images(images, seed=first)
        elif condition == "question masked":
            questions = mask_questions(questions, model.vocab.index[MASK])
        elif condition != "clean":
            raise ValueError(f"unknown condition '{condition}' (known: {', '.join(CONDITIONS)})")
        preds.append(model(images.to(device), questions.to(device))["logits"].argmax(-1).cpu())
    model.train(was_training)
    return torch.cat(preds)


def accuracy_table(preds: torch.Tensor, data: VQATensors) -> dict[str, float]:
    """Accuracy overall, per question family (relational, non-relational, ternary) and per subtype."""
    valid = data.answers >= 0
    right = (preds == data.answers) & valid
    out = {"overall": (right.sum() / valid.sum()).item()}
    for i, name in enumerate(data.family_names):
        sel = (data.families == i) & valid
        if sel.any():
            out[name] = (right[sel].sum() / sel.sum()).item()
    for i, name in enumerate(data.subtype_names):
        sel = (data.subtypes == i) & valid
        if sel.any() and len(data.subtype_names) > 1:
            out[f"type/{name}"] = (right[sel].sum() / sel.sum()).item()
    return out


def evaluate_vqa(model, data: VQATensors, conditions=("clean",)) -> dict[str, dict[str, float]]:
    return {c: accuracy_table(predict(model, data, condition=c), data) for c in conditions}


def majority_baseline(train: VQATensors, test: VQATensors) -> dict[str, float]:
    """Always answer the most common training answer of the question's subtype (the best a model
    can do that ignores the image and knows only the question type)."""
    preds = torch.zeros_like(test.answers)
    for i in range(len(test.subtype_names)):
        name = test.subtype_names[i]
        j = train.subtype_names.index(name) if name in train.subtype_names else -1
        sel = train.answers[(train.subtypes == j) & (train.answers >= 0)]
        preds[test.subtypes == i] = sel.mode().values if len(sel) else 0
    return accuracy_table(preds, test)
