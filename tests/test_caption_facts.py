"""Caption facts against ShapesWorld scenes: describe()'s captions score perfectly in every wording,
one wrong colour / invented object / reversed relation loses exactly its facts, and answers are
matched after normalising."""

import itertools
import random

import pytest

from polymodal.data.synthetic.shapes import (
    COLOURS,
    SHAPES,
    counterfactual,
    describe,
    relation,
    sample_scene,
    scene_facts,
)
from polymodal.evaluate.caption_facts import (
    Mention,
    answers_match,
    ground,
    normalise_answer,
    parse_caption,
    score_answers,
    score_caption,
    score_captions,
)


def scenes(n, seed=0, min_objects=1):
    rng = random.Random(seed)
    combos = [(c, s) for c in COLOURS for s in SHAPES]
    while n:
        objs = sample_scene(rng, combos, None, 64)
        if len(objs) >= min_objects:
            n -= 1
            yield {"objects": [{"colour": o.colour, "shape": o.shape, "size": o.size, "x": o.x, "y": o.y}
                               for o in objs], "relations": scene_facts(objs)}


def key(o):
    return (o["size"], o["colour"], o["shape"])


@pytest.mark.parametrize("heldout", [False, True], ids=["train-wording", "heldout-wording"])
@pytest.mark.parametrize("canonical", [False, True], ids=["synonyms", "canonical"])
def test_describe_captions_are_recovered_whole(heldout, canonical):
    rng = random.Random(1)
    for attributes in scenes(400, seed=2):
        objects = attributes["objects"]
        caption = describe(objects, attributes["relations"], rng, heldout=heldout, canonical=canonical)
        parsed = parse_caption(caption)
        assert not parsed.unparsed, caption
        mentioned = [(m.size, m.colour, m.shape) for m in parsed.mentions]
        assert sorted(mentioned) == sorted(key(o) for o in objects), caption
        # every stated relation, read back through the mentions, is a relation of the scene's chain
        where = {key(o): o for o in objects}
        said = {(mentioned[i], rel, mentioned[j]) for i, rel, j in parsed.relations}
        assert len(said) == len(attributes["relations"]), caption
        for a, rel, b in said:
            assert relation(where[a], where[b]) == rel, caption
        counts = score_caption(caption, attributes)
        assert (counts.precision, counts.recall, counts.chair_i, counts.unparsed) == (1.0, 1.0, 0.0, 0), caption
        assert counts.stated == counts.scene and sum(counts.stated.values()) == 3 * len(objects) + len(objects) - 1


def wrong_colour(attributes, rng):
    """The scene with one object recoloured to a colour-shape pair it does not hold."""
    objects = [dict(o) for o in attributes["objects"]]
    k = rng.randrange(len(objects))
    held = {(o["colour"], o["shape"]) for o in objects}
    objects[k]["colour"] = rng.choice([c for c in COLOURS if (c, objects[k]["shape"]) not in held])
    return objects, attributes["relations"]


def with_invented_object(caption, attributes, rng):
    """The caption, plus an object the scene does not hold, placed relative to the last object."""
    held = {(o["colour"], o["shape"]) for o in attributes["objects"]}
    colour, shape = rng.choice([(c, s) for c in COLOURS for s in SHAPES if (c, s) not in held])
    last = attributes["objects"][-1]
    extra = f"a {rng.choice(['small', 'large'])} {colour} {shape}"
    return f"{caption}, and {extra} {rng.choice(['left of', 'above'])} the {last['colour']} {last['shape']}"


def swapped_colours(attributes, rng):
    """Two objects of different shapes with their colours exchanged, or None."""
    changed = counterfactual(attributes, "swap_colours", rng)
    if changed is None:
        return None
    moved = [o for o, p in zip(changed[0], attributes["objects"]) if o["colour"] != p["colour"]]
    return changed if moved[0]["shape"] != moved[1]["shape"] else None


def lost(counts):
    """Per fact kind: (stated - correct, scene - recalled)."""
    return {k: (counts.stated[k] - counts.correct[k], counts.scene[k] - counts.recalled[k]) for k in counts.stated}


@pytest.mark.parametrize("heldout", [False, True], ids=["train-wording", "heldout-wording"])
def test_one_error_costs_exactly_its_facts(heldout):
    rng = random.Random(3)
    none = {"object": (0, 0), "colour": (0, 0), "size": (0, 0), "relation": (0, 0)}
    swaps = 0
    for attributes in scenes(150, seed=4, min_objects=2):
        n = len(attributes["objects"])
        counts = score_caption(describe(*wrong_colour(attributes, rng), rng, heldout=heldout), attributes)
        assert lost(counts) == {**none, "colour": (1, 1)} and counts.chair_i == 0

        swapped = swapped_colours(attributes, rng)
        if swapped is not None:  # (same shapes, same sizes: the swap would read as the relation reversed)
            counts = score_caption(describe(*swapped, rng, heldout=heldout), attributes)
            assert lost(counts) == {**none, "colour": (2, 2)} and counts.chair_i == 0
            swaps += 1

        counts = score_caption(describe(*counterfactual(attributes, "swap_relation", rng), rng, heldout=heldout),
                               attributes)
        assert lost(counts) == {**none, "relation": (1, 1)} and counts.chair_i == 0

        caption = with_invented_object(describe(attributes["objects"], attributes["relations"], rng, heldout=heldout),
                                       attributes, rng)
        counts = score_caption(caption, attributes)
        # its object, colour, size and relation facts are false; nothing of the scene is lost
        assert lost(counts) == {"object": (1, 0), "colour": (1, 0), "size": (1, 0), "relation": (1, 0)}, caption
        assert counts.recall == 1.0 and counts.hallucinated == 1 and counts.chair_i == pytest.approx(1 / (n + 1))
    assert swaps > 100


def test_chair_i_counts_an_invented_object():
    scene = {"objects": [{"colour": "red", "shape": "circle", "size": "small", "x": 10, "y": 30},
                         {"colour": "blue", "shape": "square", "size": "large", "x": 40, "y": 30}],
             "relations": [[0, "left of", 1]]}
    true = "A small red circle to the left of a large blue square."
    assert score_caption(true, scene).summary()["chair_i"] == 0.0
    # a second circle: the real one grounds the scene's circle, the green one is invented
    counts = score_caption(true[:-1] + ", and a tiny green dot beneath the huge box", scene)
    assert (counts.mentions, counts.hallucinated, counts.chair_i) == (3, 1, 1 / 3)
    assert counts.recall == 1.0 and counts.precision == pytest.approx(7 / 11)
    # a wrong colour is an attribute error, not an invented object (CHAIR counts object words)
    counts = score_caption("a small green circle left of a large blue square", scene)
    assert counts.chair_i == 0.0 and counts.correct["colour"] == 1 and counts.precision == pytest.approx(6 / 7)


@pytest.mark.parametrize("caption, spans", [
    ("", 0),
    ("a small red circle left of a large blue square", 0),
    ("a small red blob left of a large blue square", 1),  # "blob" is no shape: one span, no relation
    ("a small red circle floats near a large blue square", 1),
    ("a small red circle left of", 1),
    ("the quick brown fox", 1),
    ("a small large red circle", 1),  # two sizes in one noun phrase
])
def test_unparseable_spans_are_counted_not_fatal(caption, spans):
    scene = {"objects": [{"colour": "red", "shape": "circle", "size": "small", "x": 10, "y": 30},
                         {"colour": "blue", "shape": "square", "size": "large", "x": 40, "y": 30}],
             "relations": [[0, "left of", 1]]}
    counts = score_caption(caption, scene)
    assert counts.unparsed == spans
    assert counts.correct["relation"] == (caption == "a small red circle left of a large blue square")


def test_aggregates_are_over_all_facts():
    rng = random.Random(5)
    batch = list(scenes(20, seed=6, min_objects=2))
    captions = [describe(a["objects"], a["relations"], rng) for a in batch]
    captions[0] = describe(*wrong_colour(batch[0], rng), rng)
    totals = score_captions(captions, batch)
    facts = sum(4 * len(a["objects"]) - 1 for a in batch)
    assert totals["fact_precision"] == pytest.approx((facts - 1) / facts)
    assert totals["fact_recall"] == pytest.approx((facts - 1) / facts)
    assert totals["colour_precision"] < 1 and totals["relation_precision"] == 1.0 and totals["captions"] == 20
    with pytest.raises(ValueError, match="2 captions for 1 scenes"):
        score_captions(["a", "b"], batch[:1])


def test_answers_match_after_normalising():
    assert normalise_answer("Two.") == "2" and answers_match("The Red", "red")
    assert answers_match("3", "three") and not answers_match("two", "three")
    assert answers_match("a large blue square and a small red circle", "a small red circle and a large blue square")
    assert not answers_match("a small red circle", "a large red circle") and answers_match("Yes!", "yes")
    questions = [{"answer": "red", "family": "colour", "wording": "train"},
                 {"answer": "two", "family": "count", "wording": "heldout"},
                 {"answer": "a small red circle", "family": "relation_query", "wording": "train", "followup": True},
                 {"answer": "no", "family": "relation_verify", "wording": "heldout", "followup": True}]
    result = score_answers(questions, ["Red.", "2", "the small red circle", "yes"])
    assert result["exact_match"] == 0.75 and result["followup"] == 0.5 and result["followup_questions"] == 2
    assert result["by_family"] == {"colour": 1.0, "count": 1.0, "relation_query": 1.0, "relation_verify": 0.0}
    assert result["by_wording"] == {"heldout": 0.5, "train": 1.0}
    soc = score_answers([{"answer": "yes", "subtype": "left"}, {"answer": "2", "subtype": "count"}], ["yes", "3"])
    assert soc["by_family"] == {"count": 0.0, "left": 1.0}  # Sort-of-CLEVR's subtypes stand for families


def value(mentions, objects, pairs):
    """(objects grounded, attributes agreeing) of (mention, object) pairs."""
    agree = [(mentions[m].colour == objects[i]["colour"]) + (mentions[m].size == objects[i]["size"]) for m, i in pairs]
    return len(pairs), sum(agree)


def test_grounding_is_the_best_one_to_one_match():
    """Against an exhaustive search over every mention: most objects grounded, then most attributes
    agreeing, each object only by a mention of its shape."""
    rng = random.Random(7)
    for attributes in scenes(200, seed=8):
        objects = attributes["objects"]
        shapes = [o["shape"] for o in objects] + ["star"]
        mentions = [Mention(rng.choice(shapes), rng.choice([None, "red", objects[0]["colour"]]),
                            rng.choice([None, "small", "large"])) for _ in range(rng.randint(0, 7))]
        best = max(value(mentions, objects, list(zip(chosen, order)))
                   for r in range(len(objects) + 1) for order in itertools.permutations(range(len(objects)), r)
                   for chosen in itertools.permutations(range(len(mentions)), r)
                   if all(mentions[m].shape == objects[i]["shape"] for m, i in zip(chosen, order)))
        found = ground(mentions, objects)
        assert len(set(found.values())) == len(found)
        assert all(mentions[m].shape == objects[i]["shape"] for m, i in found.items())
        assert value(mentions, objects, list(found.items())) == best
