"""Dataset kinds: detection, what ShapesWorld brings, a kind added from outside, and a user's plain
image-caption dataset trained and evaluated end to end with no ShapesWorld parts."""

import json
import random

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from polymodal.cli import app
from polymodal.data import Record, load_records, write_manifest
from polymodal.data.kinds import DATASET_KINDS, GENERIC, DatasetKind, detect_kind, read_meta
from polymodal.data.pairs import ImageTextPairs
from polymodal.data.synthetic import shapes
from polymodal.evaluate.retrieval import retrieval_metrics

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 60), "blue": (40, 60, 230), "yellow": (230, 220, 40)}


@pytest.fixture(scope="module")
def user_dir(tmp_path_factory):
    """A user's dataset: JPEGs of several sizes with one caption each, train, val and test splits,
    no scene attributes and no dataset.json."""
    root = tmp_path_factory.mktemp("user")
    (root / "photos").mkdir()
    rng = random.Random(0)
    records = []
    for i in range(44):
        name, rgb = rng.choice(sorted(COLOURS.items()))
        side = rng.choice(["left", "right"])
        img = Image.new("RGB", (rng.randint(40, 90), rng.randint(30, 70)), (128, 128, 128))
        half = (0, 0, img.width // 2, img.height) if side == "left" else (img.width // 2, 0, img.width, img.height)
        img.paste(rgb, half)
        img.save(root / "photos" / f"{i}.jpg")
        split = "train" if i < 32 else "val" if i < 36 else "test"
        records.append(Record(id=str(i), split=split, image=f"photos/{i}.jpg",
                              text=[f"a {name} patch on the {side}"]))
    write_manifest(root / "manifest.jsonl", records)
    return root


def test_detection_by_records_and_by_declaration(shapes_dir, user_dir):
    shapes_records = load_records(shapes_dir).split("test").records
    user_records = load_records(user_dir).records
    assert read_meta(shapes_dir)["kind"] == "shapesworld" and read_meta(user_dir) == {}
    assert detect_kind(shapes_records) is shapes.SHAPESWORLD  # from the records alone
    assert detect_kind(shapes_records, {"kind": "shapesworld"}) is shapes.SHAPESWORLD
    assert detect_kind(user_records) is GENERIC
    # A declaration is followed where the records fit it: "generic" opts out of ShapesWorld's parts,
    # and a ShapesWorld declaration on records without scenes falls back to generic.
    assert detect_kind(shapes_records, {"kind": "generic"}) is GENERIC
    assert detect_kind(user_records, {"kind": "shapesworld"}) is GENERIC
    assert detect_kind([]) is GENERIC
    assert {"generic", "shapesworld"} <= set(DATASET_KINDS.list())


def test_shapesworld_negatives_contradict_the_scene_and_name_only_known_pairs(shapes_dir):
    pairs = ImageTextPairs(load_records(shapes_dir).split("train"), 64, progress=False)
    assert pairs.kind is shapes.SHAPESWORLD
    known = {(o["colour"], o["shape"]) for r in pairs.records for o in r.attributes["objects"]}
    rng = random.Random(0)
    for i in range(0, len(pairs), 50):
        for caption in pairs.sample_negatives(i, 3, rng):
            assert caption not in pairs.records[i].text
            named = {(c, s) for c in shapes.COLOURS for s in shapes.SHAPES if f"{c} {s}" in caption}
            assert named <= known, caption
    batch = next(pairs.batches(16, seed=0, epoch=0, hard_negatives=3))
    assert len(batch.negatives) == 16 * 3


def test_shapesworld_attribute_task_is_its_one_object_images(shapes_dir):
    records = load_records(shapes_dir).split("test").records
    task = shapes.SHAPESWORLD.attribute_task(records)
    assert task.images == [i for i, r in enumerate(records) if len(r.attributes["objects"]) == 1]
    assert len(task.candidates) == len(task.prompts) == 2 * 8 * 6
    k = task.images[0]
    assert {a: task.truth[a][0] for a in task.values} == {
        a: records[k].attributes["objects"][0][a] for a in ("colour", "shape", "size")}


def test_a_kind_registered_from_outside_decides_relevance(monkeypatch):
    """A family whose captions describe a class: every image of the class is relevant."""

    class ByLabel(DatasetKind):
        name = "by-label"

        def accepts(self, records):
            return bool(records) and all(r.labels is not None for r in records)

        def relevant_images(self, records):
            return [np.array([j for j, o in enumerate(records) if o.labels == r.labels]) for r in records]

    monkeypatch.setitem(DATASET_KINDS._items, "by-label", ByLabel())
    records = [Record(id=str(i), text=["t"], labels=i % 2) for i in range(4)]
    assert isinstance(detect_kind(records), ByLabel)
    image_emb = torch.eye(4)
    text_emb = torch.eye(4)[[2, 3, 0, 1]]  # each caption points at the other image of its class
    assert retrieval_metrics(image_emb, text_emb, np.arange(4), records)["text_to_image"]["R@1"] == 1.0
    assert retrieval_metrics(image_emb, text_emb, np.arange(4), records, GENERIC)["text_to_image"]["R@1"] == 0.0


def cli(*args) -> str:
    """The command line in this process (a subprocess would spend seconds importing torch again)."""
    res = CliRunner().invoke(app, [str(a) for a in args])
    assert res.exit_code == 0, res.output
    return res.output


@pytest.mark.slow  # trains a model
def test_a_user_dataset_trains_and_evaluates_with_retrieval_only(user_dir, tmp_path):
    pairs = ImageTextPairs(load_records(user_dir).split("train"), 32, progress=False)
    assert pairs.kind is GENERIC
    assert next(pairs.batches(8, seed=0, epoch=0, hard_negatives=3)).negatives is None
    cli("train", user_dir, "--out", tmp_path / "m", "--model", "shapes-cnn-tiny", "--steps", 4, "--batch-size", 8)
    rows = (tmp_path / "m" / "metrics.csv").read_text()
    assert ",val/t2i_R@1," in rows and "attribute_binding" not in rows
    out = cli("eval", tmp_path / "m", user_dir, "--json", tmp_path / "metrics.json")
    results = json.loads((tmp_path / "metrics.json").read_text())
    assert list(results) == ["test"]  # no test_unseen split, so no unseen gap
    test = results["test"]
    assert test["n_images"] == 8 and test["n_captions"] == 8
    assert {"text_to_image", "image_to_text"} <= set(test)
    assert 0.0 <= test["text_to_image"]["R@1"] <= 1.0
    assert test["text_to_image"]["instance_R@1_ceiling"] == 1.0  # each caption is its own image's only
    assert not {"zero_shot", "probes", "winoground", "rephrased_text_to_image"} & set(test)
    assert "exact-image R@1" in out and "probe" not in out and "zero-shot" not in out
