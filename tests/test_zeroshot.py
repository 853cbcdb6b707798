import torch

from polymodal.data.kinds import AttributeTask
from polymodal.data.synthetic.shapes import object_prompts
from polymodal.evaluate.zeroshot import attribute_zero_shot, class_embeddings, zero_shot_accuracy

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


def test_attribute_zero_shot_by_hand():
    """Two attributes from four descriptions; "max" takes the best description's values, the mean
    ensemble averages the descriptions that share a value."""
    values = {"colour": ["red", "green"], "size": ["small", "big"]}
    candidates = [{"colour": c, "size": s} for c in values["colour"] for s in values["size"]]
    prompts = [[f"a {c['size']} {c['colour']} thing"] for c in candidates]
    # image 0 looks red, image 1 green; both are labelled red, small and big
    task = AttributeTask(values, candidates, prompts, images=[0, 1], truth={"colour": ["red", "red"],
                                                                            "size": ["small", "big"]})
    res = attribute_zero_shot(WordModel(), torch.eye(3), task)
    assert res["colour"] == 0.5 and res["mean_ensemble"]["colour"] == 0.5  # image 1 is green, not red
    assert res["n"] == 2 and set(res) == {"colour", "size", "mean_ensemble", "n"}
    assert attribute_zero_shot(WordModel(), torch.eye(3), AttributeTask(values, candidates, prompts, [], {})) == {}


def test_shapes_object_prompts_cover_every_description():
    objects, prompts = object_prompts()
    assert len(objects) == 2 * 8 * 6
    for obj, texts in zip(objects, prompts):
        assert all(obj["colour"] in t or (obj["colour"] == "purple" and "violet" in t) for t in texts)


def test_probes_put_a_bag_of_words_at_chance(shapes_dir):
    """An order-blind text encoder scores each probe pair the same: 50 %, never below. (Two-object
    scenes: with three, "the yellow triangle" repeats a colour word, so the bags differ in counts.)"""
    import polymodal
    from polymodal.data import load_records
    from polymodal.evaluate.probes import run_probes

    records = [r for r in load_records(shapes_dir).split("test").records if len(r.attributes["objects"]) == 2]
    model = polymodal.create_model("shapes-cnn-bow", texts=[t for r in records for t in r.text])
    image_emb = torch.nn.functional.normalize(torch.randn(len(records), model.config.embed_dim), dim=-1)
    res = run_probes(model, image_emb, records)
    for swap in ("attribute_binding", "relation_order", "swap_attribute", "swap_object"):
        assert res[swap]["accuracy"] == 0.5, swap
    assert res["relation_order"]["n"] > 30
