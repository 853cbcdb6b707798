import numpy as np
import torch

from polymodal.evaluate.zeroshot import class_embeddings, shapes_attribute_prompts, zero_shot_accuracy

CLASSES = ["red", "green", "blue"]


class WordModel:
    """Embeds a prompt as the one-hot of the class word it contains: a model with known answers."""

    def encode_text(self, texts):
        out = torch.zeros(len(texts), len(CLASSES))
        for i, t in enumerate(texts):
            for k, c in enumerate(CLASSES):
                if c in t.split():
                    out[i, k] = 1.0
        return out


def test_prompt_ensembles_average_and_normalise():
    emb = class_embeddings(WordModel(), [["a red thing", "red"], ["green", "a green one", "green!"]])
    assert torch.allclose(emb[0], torch.tensor([1.0, 0, 0]))
    assert torch.allclose(emb.norm(dim=1), torch.ones(2))


def test_zero_shot_accuracy_by_hand():
    images = torch.eye(3)[[0, 1, 2, 2]]  # embeddings pointing at red, green, blue, blue
    res = zero_shot_accuracy(WordModel(), images, ["red", "green", "blue", "red"], CLASSES)
    assert res["accuracy"] == 0.75
    assert res["per_class"] == {"red": 0.5, "green": 1.0, "blue": 1.0}


def test_shapes_prompts_cover_the_other_attributes():
    prompts = shapes_attribute_prompts("colour", "red")
    assert len(prompts) == 2 * 6  # sizes x shapes
    assert all("red" in p for p in prompts)
    assert len({p.split()[-1] for p in prompts}) >= 6
    assert np.mean(["small" in p or "little" in p for p in prompts]) == 0.5
