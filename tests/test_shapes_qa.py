"""ShapesWorld questions and conversations: every answer recomputed from the scene by the test's own
reading of the question, follow-ups resolved, held-out wordings kept out of training, and the
records written through the dataset format."""

import json
import random
import re

import pytest

from polymodal.data import SkipLog, load_records
from polymodal.data.synthetic import shapes_qa as qa
from polymodal.data.synthetic.shapes import (
    COLOURS,
    HELDOUT_WORDS,
    SHAPES,
    SIZES,
    TRAIN_WORDS,
    ShapesConfig,
    generate,
    relation,
    sample_scene,
    scene_facts,
)

NUMBERS = ["zero", "one", "two", "three"]
CANONICAL = [*SIZES, *COLOURS, *SHAPES, "left of", "right of", "above", "below"]
# Every word or phrase -> its canonical value, from the dataset's own word lists.
WORD = {w: c for c in CANONICAL for w in [c, *TRAIN_WORDS.get(c, []), *HELDOUT_WORDS.get(c, [])]}
KIND = {c: k for k, values in (("size", SIZES), ("colour", COLOURS), ("shape", SHAPES)) for c in values}


def alternatives(words) -> str:
    return "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))


ADJ = alternatives(w for w, c in WORD.items() if KIND.get(c) in ("size", "colour"))
SHAPE = alternatives(w for w, c in WORD.items() if KIND.get(c) == "shape")
REL = alternatives(w for w, c in WORD.items() if c in ("left of", "right of", "above", "below"))
DEFINITE = re.compile(rf"\bthe ((?:(?:{ADJ}) )*)({SHAPE}|object)\b")


def scenes(n, seed=0):
    rng = random.Random(seed)
    combos = [(c, s) for c in COLOURS for s in SHAPES]
    for _ in range(n):
        objs = sample_scene(rng, combos, None, 64)
        objects = [{"colour": o.colour, "shape": o.shape, "size": o.size, "x": o.x, "y": o.y} for o in objs]
        yield {"objects": objects, "relations": scene_facts(objs)}


def resolve(objects, match):
    """The one object a definite description ("the large star", "the red object") names."""
    stated = {KIND[WORD[w]]: WORD[w] for w in match.group(1).split()}
    if match.group(2) != "object":
        stated["shape"] = WORD[match.group(2)]
    found = [i for i, o in enumerate(objects) if all(o[k] == v for k, v in stated.items())]
    assert len(found) == 1, f"{match.group(0)!r} names {len(found)} objects"
    return found[0], stated


def named(objects, indices):
    return " and ".join(f"a {objects[i]['size']} {objects[i]['colour']} {objects[i]['shape']}" for i in indices) \
        or "nothing"


def lying(objects, rel, anchor):
    """The objects that lie `rel` the anchor ("left of" it)."""
    return [j for j in range(len(objects)) if j != anchor and relation(objects[j], objects[anchor]) == rel]


def relation_in(text):
    return WORD[re.search(rf"\b({REL})\b", text).group(1)]


def expected_answer(objects, q):
    """The answer, recomputed from the scene and the question's text alone."""
    text, family = q["text"], q["family"]
    refs = [resolve(objects, m) for m in DEFINITE.finditer(text)]
    if family in ("colour", "shape", "size"):
        (i, stated), = refs
        assert family not in stated, f"{text!r} gives its own answer away"
        return objects[i][family]
    if family == "count":
        words = [WORD[w] for w in re.findall(rf"\b({ADJ})\b", text)]
        plural = re.search(rf"\b({SHAPE})(?:e?s)\b", text)
        keep = [o for o in objects if all(o["colour"] == w for w in words)
                and (plural is None or o["shape"] == WORD[plural.group(1)])]
        return NUMBERS[len(keep)]
    if family == "exists":
        m = re.search(rf"\ban? ({ADJ}) ({SHAPE})\b", text)
        pair = (WORD[m.group(1)], WORD[m.group(2)])
        return "yes" if pair in {(o["colour"], o["shape"]) for o in objects} else "no"
    rel = relation_in(text)
    if family == "relation_query":
        (anchor, _), = refs
        return named(objects, lying(objects, rel, anchor))
    (i, _), (j, _) = refs
    return "yes" if relation(objects[i], objects[j]) == rel else "no"


@pytest.mark.parametrize("wording", [qa.TRAIN_WORDING, qa.HELDOUT_WORDING, qa.HELDOUT_FRAMES], ids=lambda w: w.name)
def test_every_answer_is_true_of_the_scene(wording):
    rng, seen = random.Random(1), set()
    for attributes in scenes(300):
        for q in qa.make_questions(attributes, rng, wording):
            assert q["answer"] == expected_answer(attributes["objects"], q), q
            assert q["wording"] == wording.name
            seen.add((q["family"], q["answer"]))
    families = {f for f, _ in seen}
    assert families == set(qa.FAMILIES)
    # yes and no both occur, and relation queries find objects as well as nothing
    assert {("exists", "yes"), ("exists", "no"), ("relation_verify", "yes"), ("relation_verify", "no"),
            ("relation_query", "nothing")} <= seen
    assert any(f == "relation_query" and a.startswith("a ") for f, a in seen)


def referent_after(objects, q, it):
    """Whom the next "it" names: the single object an answer named, else the object asked about."""
    if q["family"] == "relation_query":
        hits = [i for i in range(len(objects)) if named(objects, [i]) == q["answer"]]
        return hits[0] if hits else None
    return it


@pytest.mark.parametrize("wording", [qa.TRAIN_WORDING, qa.HELDOUT_WORDING], ids=lambda w: w.name)
def test_followups_resolve_to_the_right_object(wording):
    rng, switched, followups = random.Random(2), 0, 0
    for attributes in scenes(300, seed=4):
        objects = attributes["objects"]
        talk = qa.make_conversation(attributes, rng, wording)
        first = talk[0]
        assert not first["followup"] and first["answer"] == expected_answer(objects, first)
        subject = resolve(objects, DEFINITE.search(first["text"]))[0]
        it = referent_after(objects, first, subject)
        for q in talk[1:]:
            assert it is not None  # the talk ends where "it" would be ambiguous
            assert q["followup"] and not DEFINITE.search(q["text"]), q  # names its object by "it" alone
            assert re.search(r"\b(it|its|that one)\b", q["text"])
            if q["family"] == "relation_query":
                rel = relation_in(q["text"])
                truth = named(objects, lying(objects, rel, it))
            else:
                truth = objects[it][q["family"]]
            assert q["answer"] == truth, (talk, it)
            followups += 1
            switched += it != subject
            it = referent_after(objects, q, it)
    assert followups > 300 and switched > 50  # "it" often names an answer's object, not the one asked about


def test_heldout_wordings_never_appear_in_training_wordings():
    train_frames = {f for d in (qa.TRAIN_QUESTIONS, qa.TRAIN_FOLLOWUPS) for v in d.values() for f in v}
    heldout_frames = {f for d in (qa.HELDOUT_QUESTIONS, qa.HELDOUT_FOLLOWUPS) for v in d.values() for f in v}
    assert not train_frames & heldout_frames
    texts = {w.name: set() for w in qa.WORDINGS.values()}
    rng = random.Random(5)
    for attributes in scenes(400, seed=6):
        for w in qa.WORDINGS.values():
            texts[w.name] |= {q["text"] for q in qa.make_questions(attributes, rng, w)}
            texts[w.name] |= {q["text"] for q in qa.make_conversation(attributes, rng, w)}
    assert not texts["train"] & (texts["heldout"] | texts["heldout_frames"])
    heldout_words = {w for words in HELDOUT_WORDS.values() for w in words}
    pattern = re.compile(rf"\b({alternatives(heldout_words)})\b")
    assert not any(pattern.search(t) for t in texts["train"] | texts["heldout_frames"])
    assert sum(bool(pattern.search(t)) for t in texts["heldout"]) > 100  # the held-out synonyms are used


def test_training_questions_name_no_unseen_pair_as_absent():
    rng = random.Random(7)
    unseen = set(qa.shapes.UNSEEN_COMBOS)
    for attributes in scenes(300, seed=8):
        for q in qa.make_questions(attributes, rng, per_family=2):
            if q["family"] == "exists" and q["answer"] == "no":
                assert (q["colour"], q["shape"]) not in unseen


def test_qa_dataset_is_written_through_the_dataset_format(tmp_path):
    source = tmp_path / "shapes"
    generate(source, ShapesConfig(n_train=12, n_val=3, n_test=3, n_unseen=3, seed=2), workers=1, progress=False)
    with (source / "manifest.jsonl").open("a") as f:
        f.write(json.dumps({"id": "no-scene", "split": "train", "text": ["a caption"]}) + "\n")
    skips = SkipLog()
    assert qa.write_qa_dataset(source, tmp_path / "qa", seed=1, skips=skips) == 21
    assert len(skips) == 1 and "no-scene" in skips.summary()

    records = load_records(tmp_path / "qa").records  # the images found through the rebased paths
    assert len(records) == 21 and all(r.text for r in records)
    for r in records:
        talk = r.attributes["conversations"]
        assert [t["from"] for t in talk] == ["human", "gpt"] * (len(talk) // 2)
        assert talk[0]["value"].startswith(qa.IMAGE_TOKEN + "\n")
        assert not any(qa.IMAGE_TOKEN in t["value"] for t in talk[1:])
        wordings = {q["wording"] for q in r.attributes["questions"]}
        for q in r.attributes["questions"]:
            assert q["answer"] == expected_answer(r.attributes["objects"], q)
        if r.split == "train":
            assert wordings == {"train"} and "conversations_heldout" not in r.attributes
        else:
            assert wordings == {"train", "heldout", "heldout_frames"} and r.attributes["conversations_heldout"]
    llava = json.loads((tmp_path / "qa" / "conversations.json").read_text())
    assert [(x["id"], x["image"]) for x in llava] == [(r.id, r.image) for r in records]
    assert json.loads((tmp_path / "qa" / "dataset.json").read_text())["kind"] == "shapesworld"

    # deterministic for a seed, whatever the order; another seed asks other questions
    again = [qa.add_questions(r, seed=1) for r in reversed(load_records(source).records) if r.id != "no-scene"]
    by_id = {r.id: r.attributes["questions"] for r in again}
    assert all(by_id[r.id] == r.attributes["questions"] for r in records)
    other = [qa.add_questions(r, seed=2).attributes["questions"] for r in records]
    assert other != [r.attributes["questions"] for r in records]
