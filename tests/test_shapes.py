import hashlib
import json
import random

from polymodal.data import load_records
from polymodal.data.synthetic import shapes
from polymodal.data.synthetic.shapes import ShapesConfig, generate


def _digest(root):
    h = hashlib.sha256((root / "manifest.jsonl").read_bytes())
    for p in sorted((root / "images").rglob("*.png")):
        h.update(p.read_bytes())
    return h.hexdigest()


def test_same_seed_same_dataset_whatever_the_workers(tmp_path):
    cfg = ShapesConfig(n_train=120, n_val=10, n_test=20, n_unseen=20, seed=5)
    generate(tmp_path / "a", cfg, workers=1, progress=False)
    generate(tmp_path / "b", cfg, workers=2, progress=False)
    generate(tmp_path / "c", ShapesConfig(n_train=120, n_val=10, n_test=20, n_unseen=20, seed=6), workers=1,
             progress=False)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    assert _digest(tmp_path / "a") != _digest(tmp_path / "c")


def test_splits_and_unseen_combinations(shapes_dir):
    data = load_records(shapes_dir)
    assert data.splits == {"train": 600, "val": 100, "test": 200, "test_unseen": 100}
    unseen = set(shapes.UNSEEN_COMBOS)
    for rec in data:
        combos = {(o["colour"], o["shape"]) for o in rec.attributes["objects"]}
        if rec.split == "test_unseen":
            assert combos & unseen
        else:
            assert not combos & unseen
    meta = json.loads((shapes_dir / "dataset.json").read_text())
    assert len(meta["colours"]) >= 8 and len(meta["shapes"]) >= 5


def test_images_show_the_described_colours(shapes_dir):
    from PIL import Image

    data = load_records(shapes_dir)
    for rec in data.records[:50]:
        img = Image.open(data.path(rec.image))
        assert img.size == (64, 64)
        for o in rec.attributes["objects"]:
            assert img.getpixel((int(o["x"]), int(o["y"]))) == shapes.COLOURS[o["colour"]]


def test_captions_name_every_object_and_their_relations(shapes_dir):
    data = load_records(shapes_dir)
    for rec in data.records[:100]:
        assert len(rec.text) == 5
        for caption in rec.text:
            for o in rec.attributes["objects"]:
                assert o["colour"] in caption or (o["colour"] == "purple" and "violet" in caption)
        if len(rec.attributes["objects"]) > 1:
            words = shapes.TRAIN_WORDS
            rel_words = {w for r in shapes.RELATIONS for w in words[r]}
            assert all(any(w in c for w in rel_words) for c in rec.text)
    n_objects = {len(r.attributes["objects"]) for r in data}
    assert n_objects == {1, 2, 3}


def test_relations_are_true_of_positions():
    rng = random.Random(0)
    combos = [(c, s) for c in shapes.COLOURS for s in shapes.SHAPES]
    for _ in range(200):
        objs = shapes.sample_scene(rng, combos, None, 64)
        for i, rel, j in shapes.scene_facts(objs):
            a, b = objs[i], objs[j]
            assert {"left of": a.x < b.x, "right of": a.x > b.x, "above": a.y < b.y, "below": a.y > b.y}[rel]


def test_counterfactuals_change_exactly_one_fact_and_keep_wording(shapes_dir):
    data = load_records(shapes_dir)
    two = next(r for r in data if len(r.attributes["objects"]) == 2
               and len({o["colour"] for o in r.attributes["objects"]}) == 2)
    objects, facts = shapes.counterfactual(two.attributes, "swap_colours", random.Random(0))
    assert not shapes.satisfies(two.attributes, {"objects": objects, "relations": facts})
    true = shapes.describe(two.attributes["objects"], two.attributes["relations"], random.Random(1))
    false = shapes.describe(objects, facts, random.Random(1))
    assert true != false and sorted(true.split()) == sorted(false.split())  # same words, colours moved
    objects, facts = shapes.counterfactual(two.attributes, "swap_relation", random.Random(0))
    assert not shapes.satisfies(two.attributes, {"objects": objects, "relations": facts})
    assert shapes.satisfies(two.attributes, two.attributes)
