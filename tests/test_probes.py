"""Probe generators (ARO, SugarCrepe-style families, Winoground-style groups) checked against the
scene: each pair differs exactly as its family says, and the true caption is the scene's."""

import random
from collections import Counter

import pytest

import polymodal
from polymodal.data import load_records
from polymodal.data.synthetic import shapes
from polymodal.evaluate.probes import probe_pairs, run_winoground, winoground_items


@pytest.fixture(scope="module")
def records(shapes_dir):
    return load_records(shapes_dir).split("test").records


def words(text: str) -> Counter:
    return Counter(text.replace(",", " ").replace(";", " ").split())


@pytest.mark.parametrize("kind", ["swap_colours", "swap_shapes", "swap_relation", "replace_relation",
                                  "replace_colour", "replace_shape", "replace_size"])
def test_every_counterfactual_contradicts_its_scene(records, kind):
    rng, changed_any = random.Random(0), 0
    for r in records:
        changed = shapes.counterfactual(r.attributes, kind, rng)
        if changed is None:
            continue
        changed_any += 1
        objects, facts = changed
        assert not shapes.satisfies(r.attributes, {"objects": objects, "relations": facts})
        before, after = r.attributes["objects"], objects
        if kind.startswith("swap_") and kind != "swap_relation":
            attr = "colour" if kind == "swap_colours" else "shape"
            assert sorted(o[attr] for o in before) == sorted(o[attr] for o in after)
            assert sum(a[attr] != b[attr] for a, b in zip(before, after)) == 2
        if kind.startswith("replace_") and kind != "replace_relation":
            attr = kind.removeprefix("replace_")
            assert sum(a[attr] != b[attr] for a, b in zip(before, after)) == 1
        if "relation" in kind:
            assert before == after and facts != r.attributes["relations"]
    assert changed_any > 20


@pytest.mark.parametrize("family", shapes.SHAPESWORLD.probe_families)
def test_probe_pairs_differ_exactly_as_the_family_says(records, family):
    idx, true, false = probe_pairs(records, family)
    assert len(idx) > 20
    for i, t, f in zip(idx, true, false):
        r = records[i]
        assert t != f
        delta = words(f) - words(t), words(t) - words(f)
        if family in ("attribute_binding", "relation_order", "swap_attribute", "swap_object"):
            # The same words in another order (with three objects, "the red circle" repeats one
            # object's words, so only the set is the same): a bag of words cannot tell.
            assert set(words(t)) == set(words(f))
            assert words(t) == words(f) or len(r.attributes["objects"]) == 3
        elif family == "add_attribute":
            # One colour more, wherever its object is named, and nothing less.
            assert len(delta[0]) == 1 and next(iter(delta[0])) in shapes.COLOURS and not delta[1]
        else:  # replace: one word exchanged for another (a relation may take several words)
            assert delta[0] and delta[1]
        # The true caption describes the scene in the same canonical wording the generator uses.
        if family != "add_attribute":
            canonical = shapes.describe(r.attributes["objects"], r.attributes["relations"], random.Random(r.id),
                                        canonical=True)
            assert t == canonical


def test_winoground_groups_pair_each_caption_with_its_own_scene(records):
    for kind in ("swap_colours", "swap_relation"):
        items = winoground_items(records, kind, limit=20)
        assert len(items) >= 5, kind
        for (image0, caption0), (image1, caption1) in items:
            assert words(caption0) == words(caption1) and caption0 != caption1
            assert image0.size == image1.size and image0.tobytes() != image1.tobytes()


def test_a_bag_of_words_never_wins_a_winoground_group(records):
    model = polymodal.create_model("shapes-cnn-bow", texts=[t for r in records for t in r.text])
    scores = run_winoground(model, records, limit=30)
    for kind in ("swap_colours", "swap_relation"):
        assert scores[kind]["text"] == 0.0 and scores[kind]["group"] == 0.0  # its two captions tie
    assert scores["group"] == 0.0
