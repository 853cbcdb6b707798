"""GenEval-style prompts and scoring on ShapesWorld (issue 13): prompts are true of the scene
they come from, the true scenes score near 1, images that get colours, binding or position wrong
score low in exactly those categories, and prompt captions extend a dataset without changing it."""

from __future__ import annotations

import hashlib
import json
import random

from PIL import Image

from polymodal.data import load_records
from polymodal.data.synthetic.shapes import (
    COLOURS,
    INVERSE,
    PROMPT_CATEGORIES,
    RELATIONS,
    SHAPES,
    UNSEEN_COMBOS,
    Obj,
    ShapesConfig,
    generate,
    prompt_captions,
    render,
    sample_scene,
    scene_facts,
    scene_prompt,
)
from polymodal.evaluate.geneval import prompt_set, satisfied, score
from polymodal.evaluate.scene_checker import Detection

ALL_COMBOS = [(c, s) for c in COLOURS for s in SHAPES]
SEEN_COMBOS = [c for c in ALL_COMBOS if c not in UNSEEN_COMBOS]
NUMBERS = {"one": 1, "two": 2, "three": 3}


def scenes(n: int, seed: int, combos=ALL_COMBOS, must=None) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        objs = sample_scene(rng, combos, must, 64)
        out.append({"attributes": {"objects": [dict(vars(o)) for o in objs], "relations": scene_facts(objs)}})
    return out


def images_of(records, specs, change=lambda objects, spec: objects):
    """The source scene of each spec, rendered after `change` (the identity: the true image)."""
    return [render([Obj(**o) for o in change([dict(o) for o in records[s["source"]]["attributes"]["objects"]], s)])
            for s in specs]


def truth(objects: list[dict]) -> list[Detection]:
    """The scene's objects as a perfect detector would report them (no checker involved)."""
    return [Detection(o["colour"], o["shape"], o["size"], o["x"], o["y"], 1) for o in objects]


def parse(text: str) -> dict:
    """A prompt's spec, read back from its words alone: the grammar a prompt caption must follow."""
    first, _, rest = text.partition(" ")
    if first in NUMBERS:
        shape = rest if first == "one" else rest[:-2] if rest.endswith("sses") else rest[:-1]
        assert shape in SHAPES, text
        return {"category": "counting", "objects": [{"shape": shape, "colour": None, "count": NUMBERS[first]}],
                "relation": None}
    rel = next((r for r in RELATIONS if f" {r} " in text), None)
    nouns = [part.split() for part in text.split(f" {rel} " if rel else " and ")]
    assert all(n[0] == ("an" if n[1][0] in "aeiou" else "a") and len(n) in (2, 3) for n in nouns), text
    objects = [{"shape": n[-1], "colour": n[1] if len(n) == 3 else None, "count": 1} for n in nouns]
    coloured = objects[0]["colour"] is not None
    category = "position" if rel else {(1, False): "single_object", (2, False): "two_objects", (1, True): "colours",
                                       (2, True): "colour_attribution"}[len(objects), coloured]
    assert all(o["shape"] in SHAPES and o["colour"] in (None, *COLOURS) for o in objects), text
    return {"category": category, "objects": objects, "relation": [0, rel, 1] if rel else None}


def test_prompts_are_true_of_their_scene_and_the_true_scene_scores_near_one():
    records = scenes(150, seed=1)
    specs = prompt_set(records, per_category=25, seed=0)
    assert prompt_set(records, per_category=25, seed=0) == specs
    assert [s["text"] for s in prompt_set(records, per_category=25, seed=1)] != [s["text"] for s in specs]
    assert [s["category"] for s in specs] == [c for c in PROMPT_CATEGORIES for _ in range(25)]
    for s in specs:
        assert parse(s["text"]) == {k: s[k] for k in ("category", "objects", "relation")}, s["text"]
        assert satisfied(truth(records[s["source"]]["attributes"]["objects"]), s), s["text"]
    counts = {s["objects"][0]["count"] for s in specs if s["category"] == "counting"}
    assert counts == {1, 2, 3}  # counting is balanced over counts, not mostly "one X"
    result = score(images_of(records, specs), specs)
    assert set(result) == {*PROMPT_CATEGORIES, "overall"}
    assert result["overall"] >= 0.97 and min(result.values()) >= 0.9, result


def test_the_wording():
    scene = [{"colour": "orange", "shape": "star", "x": 10, "y": 32}, {"colour": "red", "shape": "cross", "x": 32,
              "y": 31}, {"colour": "blue", "shape": "cross", "x": 54, "y": 33}]
    rng = random.Random(0)
    texts = {c: {scene_prompt(scene, c, rng)["text"] for _ in range(200)} for c in PROMPT_CATEGORIES}
    assert texts["single_object"] == {"a star", "a cross"}
    assert texts["two_objects"] == {"a star and a cross", "a cross and a star"}
    assert texts["counting"] == {"one star", "two crosses"}
    assert texts["colours"] == {"an orange star", "a red cross", "a blue cross"}
    assert {"an orange star left of a red cross", "a blue cross right of a red cross"} <= texts["position"]
    assert len(texts["position"]) == 6
    assert "a red cross and a blue cross" not in texts["colour_attribution"]  # same shape: binding untested
    assert "an orange star and a blue cross" in texts["colour_attribution"] and len(texts["colour_attribution"]) == 4
    assert [scene_prompt(scene[:1], c, rng) for c in ("two_objects", "position", "colour_attribution")] == [None] * 3
    assert scene_prompt([{**scene[0], "colour": "red"}, scene[1]], "colour_attribution", rng) is None  # one colour
    assert scene_prompt(scene[:1], "counting", rng) == {"text": "one star", "category": "counting", "relation": None,
                                                        "objects": [{"shape": "star", "colour": None, "count": 1}]}
    assert len(prompt_captions(scene, rng, 5)) == 5


def test_images_that_get_the_prompt_wrong_score_low_where_they_are_wrong():
    records = scenes(120, seed=2)
    specs = prompt_set(records, per_category=20, seed=0)
    colours = list(COLOURS)

    def recolour(objects, spec):  # every object the next colour: shapes and places kept
        return [{**o, "colour": colours[(colours.index(o["colour"]) + 1) % len(colours)]} for o in objects]

    def mirror(objects, spec):  # every relation reversed: colours and shapes kept
        return [{**o, "x": 64 - o["x"], "y": 64 - o["y"]} for o in objects]

    def swap_named_colours(objects, spec):  # the two named objects exchange colours (attribute binding)
        if spec["category"] == "colour_attribution":
            a, b = (next(o for o in objects if (o["colour"], o["shape"]) == (n["colour"], n["shape"]))
                    for n in spec["objects"])
            a["colour"], b["colour"] = b["colour"], a["colour"]
        return objects

    empty = score([Image.new("RGB", (64, 64), (20, 20, 24))] * len(specs), specs)
    assert max(empty.values()) == 0.0, empty
    recoloured = score(images_of(records, specs, recolour), specs)
    assert max(recoloured[c] for c in ("colours", "position", "colour_attribution")) < 0.3, recoloured
    assert min(recoloured[c] for c in ("single_object", "two_objects", "counting")) >= 0.9, recoloured
    mirrored = score(images_of(records, specs, mirror), specs)
    assert mirrored["position"] < 0.3 and mirrored["colour_attribution"] >= 0.9, mirrored
    swapped = score(images_of(records, specs, swap_named_colours), specs)
    assert swapped["colour_attribution"] < 0.3, swapped


def test_satisfied_follows_genevals_rules():
    red_circle, blue_circle = Detection("red", "circle", "large", 10, 30, 300), Detection("blue", "circle", "small",
                                                                                          50, 32, 100)
    spec = {"category": "counting", "objects": [{"shape": "circle", "colour": None, "count": 1}], "relation": None}
    assert satisfied([red_circle], spec) and not satisfied([red_circle, blue_circle], spec)  # counting: exactly
    assert satisfied([red_circle, blue_circle], {**spec, "category": "single_object"})  # otherwise: at least
    position = {"category": "position", "relation": [0, "left of", 1],
                "objects": [{"shape": "circle", "colour": "red", "count": 1},
                            {"shape": "circle", "colour": "blue", "count": 1}]}
    assert satisfied([red_circle, blue_circle], position)
    assert not satisfied([red_circle, blue_circle], {**position, "relation": [0, INVERSE["left of"], 1]})
    assert not satisfied([red_circle], position)


def test_unseen_only_prompts_name_a_held_out_pair():
    records = scenes(60, seed=3, must=list(UNSEEN_COMBOS))
    specs = prompt_set(records, per_category=15, seed=0, unseen_only=True)
    assert {s["category"] for s in specs} == {"colours", "position", "colour_attribution"} and len(specs) == 45
    assert all(any((o["colour"], o["shape"]) in UNSEEN_COMBOS for o in s["objects"]) for s in specs)
    assert score(images_of(records, specs), specs)["overall"] >= 0.97
    assert prompt_set(scenes(30, seed=4, combos=SEEN_COMBOS), 10, unseen_only=True) == []


# The manifest of this tiny dataset as it was generated before prompt captions existed.
TINY = {"n_train": 20, "n_val": 4, "n_test": 4, "n_unseen": 4, "seed": 3}
TINY_MANIFEST_SHA256 = "0eb56ef29b0480826bd2102567ebbd0bcc3daa8ba5ffa819f43a2fcf1ac4bbfb"


def test_prompt_captions_extend_a_dataset_and_change_nothing_else(tmp_path):
    generate(tmp_path / "plain", ShapesConfig(**TINY), workers=1, progress=False)
    generate(tmp_path / "prompted", ShapesConfig(**TINY, prompt_captions=2), workers=1, progress=False)
    assert hashlib.sha256((tmp_path / "plain" / "manifest.jsonl").read_bytes()).hexdigest() == TINY_MANIFEST_SHA256
    assert "prompt_captions" not in json.loads((tmp_path / "plain" / "dataset.json").read_text())
    assert json.loads((tmp_path / "prompted" / "dataset.json").read_text())["prompt_captions"] == 2
    plain, prompted = load_records(tmp_path / "plain").records, load_records(tmp_path / "prompted").records
    assert len(plain) == len(prompted) == 32
    categories = set()
    for a, b in zip(plain, prompted, strict=True):
        assert (a.id, a.attributes) == (b.id, b.attributes)
        assert (tmp_path / "plain" / a.image).read_bytes() == (tmp_path / "prompted" / b.image).read_bytes()
        if b.split != "train":  # evaluation records keep their scene-matching captions alone
            assert b.text == a.text
            continue
        assert b.text[:-2] == a.text and len(b.text) == len(a.text) + 2
        for text in b.text[-2:]:
            spec = parse(text)
            categories.add(spec["category"])
            assert satisfied(truth(b.attributes["objects"]), spec), (text, b.attributes["objects"])
    assert len(categories) >= 4


def test_the_cli_writes_prompt_captions(tmp_path):
    from typer.testing import CliRunner

    from polymodal.cli import app

    args = ["data", "shapes", str(tmp_path), "--n", "3", "--val", "0", "--test", "0", "--unseen", "0",
            "--workers", "1", "--prompt-captions", "1", "--captions", "1"]
    assert CliRunner().invoke(app, args).exit_code == 0
    assert all(len(r.text) == 2 and parse(r.text[1]) for r in load_records(tmp_path).records)
