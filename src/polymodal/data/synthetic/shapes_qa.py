"""Question-answer pairs and multi-turn conversations about ShapesWorld scenes, answers known.

Every question is built from a record's scene (`attributes["objects"]`), so its answer is computed,
never guessed: the colour, shape or size of an object, how many objects (of a colour, of a shape)
there are, whether an object exists, what lies left of / above / ... an object, and whether one
object lies in a given relation to another (relations along the dominant axis, as the captions
state them). Questions come in training wordings and in held-out wordings (other sentence frames,
and the captions' held-out synonyms) that training never shows.

A conversation asks about one object and then follows it up ("and what is above it?"): "it" is the
object the last answer named, or, when the answer was an attribute, the object asked about.

`write_qa_dataset` writes the questions into the ordinary dataset format: each record keeps its
image and captions and gains `attributes["questions"]` (the VQA record format, as Sort-of-CLEVR
writes it) and `attributes["conversations"]` (LLaVA's list of `{"from": "human"|"gpt", "value"}`
turns, the first carrying `<image>`), plus a LLaVA-style `conversations.json` beside the manifest.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ...utils import write_json
from ..formats.manifest import read_manifest
from ..kinds import read_meta
from ..schema import Record, SkipLog, write_manifest
from . import shapes
from .shapes import COLOURS, INVERSE, QUARTER_TURN, RELATIONS, SHAPES, TRAIN_WORDS, is_shapes_record, relation

FAMILIES = ("colour", "shape", "size", "count", "exists", "relation_query", "relation_verify")
RELATIONAL_FAMILIES = frozenset({"relation_query", "relation_verify"})
FOLLOWUP_FAMILIES = ("colour", "shape", "size", "relation_query")
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
NOTHING = "nothing"
IMAGE_TOKEN = "<image>"  # LLaVA's placeholder for the image in the first human turn

# Question frames. {o}/{o1}/{o2}: a referring expression ("the red circle"); {a}: "a red circle";
# {c}: a colour word; {shapes}: a plural shape word; {rel}: a relation phrase.
TRAIN_QUESTIONS = {
    "colour": ("what colour is {o}?", "what color is {o}?", "which colour is {o}?"),
    "shape": ("what shape is {o}?", "which shape is {o}?"),
    "size": ("what size is {o}?", "is {o} small or large?"),
    "count": ("how many objects are there?", "how many shapes are in the image?"),
    "count_colour": ("how many {c} objects are there?",),
    "count_shape": ("how many {shapes} are there?",),
    "exists": ("is there {a}?", "does the image contain {a}?"),
    "relation_query": ("what is {rel} {o}?", "which object is {rel} {o}?"),
    "relation_verify": ("is {o1} {rel} {o2}?",),
}
HELDOUT_QUESTIONS = {
    "colour": ("tell me the colour of {o}.", "which hue does {o} have?"),
    "shape": ("name the shape of {o}.",),
    "size": ("how big is {o}?",),
    "count": ("count the objects in the picture.",),
    "count_colour": ("count the {c} objects in the picture.",),
    "count_shape": ("count the {shapes} in the picture.",),
    "exists": ("can you see {a} in this picture?",),
    "relation_query": ("name what can be found {rel} {o}.",),
    "relation_verify": ("would you say that {o1} sits {rel} {o2}?",),
}
TRAIN_FOLLOWUPS = {
    "colour": ("and what colour is it?",),
    "shape": ("and what shape is it?",),
    "size": ("and what size is it?",),
    "relation_query": ("and what is {rel} it?",),
}
HELDOUT_FOLLOWUPS = {
    "colour": ("tell me its colour, too.",),
    "shape": ("name its shape, too.",),
    "size": ("and how big is that one?",),
    "relation_query": ("and what can be found {rel} that one?",),
}


@dataclass(frozen=True)
class Wording:
    """The sentence frames and the words (synonyms) that questions are phrased with."""

    name: str
    questions: dict[str, tuple[str, ...]]
    followups: dict[str, tuple[str, ...]]
    words: dict[str, list[str]]


TRAIN_WORDING = Wording("train", TRAIN_QUESTIONS, TRAIN_FOLLOWUPS, TRAIN_WORDS)
HELDOUT_WORDING = Wording("heldout", HELDOUT_QUESTIONS, HELDOUT_FOLLOWUPS, shapes.HELDOUT_WORDS)
# Held-out frames with the training words: isolates sentence structure from vocabulary.
HELDOUT_FRAMES = Wording("heldout_frames", HELDOUT_QUESTIONS, HELDOUT_FOLLOWUPS, TRAIN_WORDS)
WORDINGS = {w.name: w for w in (TRAIN_WORDING, HELDOUT_WORDING, HELDOUT_FRAMES)}
# The attributes a referring expression may name, in the order words are said.
REFERENCES = (("shape",), ("size", "shape"), ("colour", "shape"), ("colour",), ("size", "colour"), ("size",))
SEEN_PAIRS = frozenset((c, s) for c in COLOURS for s in SHAPES) - set(shapes.UNSEEN_COMBOS)


def number_word(n: int) -> str:
    return NUMBER_WORDS[n] if 0 <= n < len(NUMBER_WORDS) else str(n)


def describe_object(o: dict) -> str:
    """The canonical answer naming one object: "a small red circle"."""
    return f"a {o['size']} {o['colour']} {o['shape']}"


def describe_objects(objects: list[dict], indices: list[int]) -> str:
    """The canonical answer naming several objects (in scene order), or "nothing"."""
    return " and ".join(describe_object(objects[i]) for i in indices) or NOTHING


def objects_in_relation(objects: list[dict], rel: str, anchor: int) -> list[int]:
    """Indices of the objects that lie `rel` the anchor object (e.g. left of it)."""
    return [i for i, o in enumerate(objects) if i != anchor and relation(o, objects[anchor]) == rel]


class _Phraser:
    """Draws the words of one question: synonyms from the wording, one random draw per word."""

    def __init__(self, wording: Wording, rng: random.Random):
        self.wording, self.rng = wording, rng

    def word(self, w: str) -> str:
        options = self.wording.words.get(w) or TRAIN_WORDS.get(w) or [w]
        return self.rng.choice(options)

    def plural(self, shape: str) -> str:
        w = self.word(shape)
        return w + ("es" if w.endswith(("s", "x")) else "s")

    def refer(self, objects: list[dict], i: int, hide: str | None = None) -> str | None:
        """A definite description that picks out object i alone without naming `hide` (the
        attribute asked for): "the star", "the large star", "the blue star", or, hiding the shape,
        "the blue object"; None where no such description is unique in the scene."""
        o = objects[i]
        unique = [attrs for attrs in REFERENCES if hide not in attrs and (hide == "shape") != ("shape" in attrs)
                  and sum(all(other[a] == o[a] for a in attrs) for other in objects) == 1]
        if not unique:
            return None
        attrs = self.rng.choice(unique)
        head = self.word(o["shape"]) if "shape" in attrs else "object"
        return " ".join(["the", *(self.word(o[a]) for a in attrs if a != "shape"), head])

    def a(self, colour: str, shape: str) -> str:
        """ "a red circle", "an orange star"."""
        phrase = f"{self.word(colour)} {self.word(shape)}"
        return ("an " if phrase[0] in "aeiou" else "a ") + phrase

    def frame(self, key: str, followup: bool = False) -> str:
        return self.rng.choice((self.wording.followups if followup else self.wording.questions)[key])


def _question(text: str, answer: str, family: str, wording: Wording, about: list[int], **extra) -> dict:
    return {"text": text, "answer": answer, "family": family, "subtype": family,
            "relational": family in RELATIONAL_FAMILIES, "wording": wording.name, "objects": about, **extra}


# ----------------------------------------------------------------------------------------------
# One question per family


def ask_attribute(objects: list[dict], family: str, p: _Phraser, i: int) -> dict | None:
    """"what colour is the square?", "what shape is the red object?": object i named by what
    singles it out, never by the attribute asked for (None where nothing else singles it out)."""
    ref = p.refer(objects, i, hide=family)
    if ref is None:
        return None
    return _question(p.frame(family).format(o=ref), objects[i][family], family, p.wording, [i])


def ask_count(objects: list[dict], p: _Phraser) -> dict:
    """How many objects, objects of a colour, or of a shape (the colour or shape may be absent)."""
    key = p.rng.choice(("count", "count_colour", "count_shape"))
    if key == "count":
        return _question(p.frame(key), number_word(len(objects)), "count", p.wording, list(range(len(objects))))
    attr = "colour" if key == "count_colour" else "shape"
    value = p.rng.choice(list(COLOURS) if attr == "colour" else list(SHAPES))
    if p.rng.random() < 0.7:  # mostly a value the scene holds, so that counts are not mostly zero
        value = p.rng.choice(objects)[attr]
    about = [i for i, o in enumerate(objects) if o[attr] == value]
    text = p.frame(key).format(c=p.word(value), shapes=p.plural(value) if attr == "shape" else "")
    return _question(text, number_word(len(about)), "count", p.wording, about, attribute=attr, value=value)


def ask_exists(objects: list[dict], p: _Phraser, pairs: frozenset) -> dict:
    """"is there a red circle?": yes for an object of the scene, no for a pair from `pairs` (the
    pairs training may name) that the scene does not hold."""
    present = {(o["colour"], o["shape"]) for o in objects}
    absent = sorted(pairs - present)
    yes = p.rng.random() < 0.5 or not absent
    colour, shape = (p.rng.choice(sorted(present)) if yes else p.rng.choice(absent))
    about = [i for i, o in enumerate(objects) if (o["colour"], o["shape"]) == (colour, shape)]
    text = p.frame("exists").format(a=p.a(colour, shape))
    return _question(text, "yes" if yes else "no", "exists", p.wording, about, colour=colour, shape=shape)


def ask_relation_query(objects: list[dict], p: _Phraser, anchor: int | None = None, followup: bool = False) -> dict:
    """"what is left of the blue star?" -> the objects there ("nothing" where there are none).
    Mostly a relation that has an answer: four relations of which a 2-object scene fills one."""
    anchors = [anchor] if anchor is not None else list(range(len(objects)))
    options = [(a, r) for a in anchors for r in RELATIONS]
    filled = [(a, r) for a, r in options if objects_in_relation(objects, r, a)]
    a, rel = p.rng.choice(filled if filled and p.rng.random() < 0.8 else options)
    found = objects_in_relation(objects, rel, a)
    if followup:
        text = p.frame("relation_query", followup=True).format(rel=p.word(rel))
    else:
        text = p.frame("relation_query").format(rel=p.word(rel), o=p.refer(objects, a))
    return _question(text, describe_objects(objects, found), "relation_query", p.wording, [a], relation=rel,
                     answer_objects=found, followup=followup)


def ask_relation_verify(objects: list[dict], p: _Phraser) -> dict | None:
    """"is the red circle above the star?": half the time the true relation (yes), else its
    inverse or a quarter turn (no: each pair has one dominant axis)."""
    if len(objects) < 2:
        return None
    i, j = p.rng.sample(range(len(objects)), 2)
    truth = relation(objects[i], objects[j])
    yes = p.rng.random() < 0.5
    rel = truth if yes else p.rng.choice((INVERSE[truth], *QUARTER_TURN[truth]))
    text = p.frame("relation_verify").format(o1=p.refer(objects, i), rel=p.word(rel), o2=p.refer(objects, j))
    return _question(text, "yes" if yes else "no", "relation_verify", p.wording, [i, j], relation=rel)


def make_questions(attributes: dict, rng: random.Random, wording: Wording = TRAIN_WORDING, per_family: int = 1,
                   pairs: Iterable[tuple[str, str]] = SEEN_PAIRS) -> list[dict]:
    """Up to `per_family` questions of each family about the scene (fewer where a family does not
    apply: no relations in a one-object scene; no "what shape is the red object?" where two
    objects are red). `pairs`: the colour-shape pairs an "is there ...?" question may name."""
    objects, p, pairs = attributes["objects"], _Phraser(wording, rng), frozenset(pairs)
    out = []
    for family in FAMILIES:
        for _ in range(per_family):
            if family in ("colour", "shape", "size"):
                q = ask_attribute(objects, family, p, rng.randrange(len(objects)))
            elif family == "count":
                q = ask_count(objects, p)
            elif family == "exists":
                q = ask_exists(objects, p, pairs)
            elif family == "relation_query":
                q = ask_relation_query(objects, p)
            else:
                q = ask_relation_verify(objects, p)
            if q is not None:
                out.append(q)
    return out


# ----------------------------------------------------------------------------------------------
# Conversations: a later question refers to an earlier answer


def _followup(objects: list[dict], family: str, p: _Phraser, referent: int) -> dict:
    if family == "relation_query":
        return ask_relation_query(objects, p, anchor=referent, followup=True)
    text = p.frame(family, followup=True)
    return _question(text, objects[referent][family], family, p.wording, [referent], followup=True)


def _next_referent(q: dict, referent: int) -> int | None:
    """Whom "it" names after `q`: the one object the answer named, else the object asked about;
    None after "nothing" or a list of objects, where "it" would be ambiguous (the talk ends)."""
    if q["family"] != "relation_query":
        return referent
    found = q["answer_objects"]
    return found[0] if len(found) == 1 else None


def make_conversation(attributes: dict, rng: random.Random, wording: Wording = TRAIN_WORDING,
                      turns: int = 3) -> list[dict]:
    """Up to `turns` questions: one about an object, then follow-ups about "it". Each turn holds
    `objects` (the object it is about) and `followup`."""
    objects, p = attributes["objects"], _Phraser(wording, rng)
    referent = rng.randrange(len(objects))
    first_family = rng.choice(("colour", "size", "relation_query"))
    if first_family == "relation_query":
        first = ask_relation_query(objects, p, anchor=referent)
    else:  # a size question can always name its object (colour-shape pairs are unique)
        first = ask_attribute(objects, first_family, p, referent) or ask_attribute(objects, "size", p, referent)
    talk = [{**first, "followup": False}]
    referent = _next_referent(first, referent)
    while len(talk) < turns and referent is not None:
        asked = {q["family"] for q in talk if q["objects"] == [referent] and q["family"] != "relation_query"}
        family = rng.choice([f for f in FOLLOWUP_FAMILIES if f not in asked])
        q = _followup(objects, family, p, referent)
        talk.append(q)
        referent = _next_referent(q, referent)
    return talk


def to_llava(turns: list[dict]) -> list[dict]:
    """LLaVA's `conversations` list: human and gpt turns alternating, `<image>` in the first. The
    gpt turns keep the question's family and follow-up flag (LLaVA readers ignore extra keys)."""
    out = []
    for k, q in enumerate(turns):
        out.append({"from": "human", "value": f"{IMAGE_TOKEN}\n{q['text']}" if k == 0 else q["text"]})
        out.append({"from": "gpt", "value": q["answer"], "family": q["family"], "followup": q.get("followup", False)})
    return out


# ----------------------------------------------------------------------------------------------
# Writing them through the dataset format


def add_questions(record: Record, seed: int = 0, per_family: int = 1, turns: int = 3) -> Record:
    """`record` with `attributes["questions"]` and `["conversations"]` added; evaluation splits
    (all but "train") also get the held-out wordings' questions and `["conversations_heldout"]`.
    The draws depend on (seed, record id) only, so any order or subset gives the same questions."""
    rng = random.Random(f"shapes-qa/{seed}/{record.id}")
    attributes = dict(record.attributes)
    questions = make_questions(attributes, rng, TRAIN_WORDING, per_family)
    attributes["conversations"] = to_llava(make_conversation(attributes, rng, TRAIN_WORDING, turns))
    if record.split != "train":
        for wording in (HELDOUT_WORDING, HELDOUT_FRAMES):
            questions += make_questions(attributes, rng, wording, per_family)
        attributes["conversations_heldout"] = to_llava(make_conversation(attributes, rng, HELDOUT_WORDING, turns))
    attributes["questions"] = questions
    return Record(id=record.id, split=record.split, image=record.image, audio=record.audio, text=list(record.text),
                  attributes=attributes, labels=record.labels)


def _rebased(record: Record, source: Path, out: Path) -> Record:
    """Media paths made relative to `out`, so a dataset written elsewhere still finds its images."""
    if source.resolve() != out.resolve():
        for key in ("image", "audio"):
            if getattr(record, key):
                setattr(record, key, os.path.relpath(source / getattr(record, key), out))
    return record


def write_qa_dataset(source: str | Path, out: str | Path | None = None, seed: int = 0, per_family: int = 1,
                     turns: int = 3, skips: SkipLog | None = None) -> int:
    """Read the ShapesWorld dataset at `source` and write it, questions and conversations added,
    to `out` (default: `source`, rewritten in place): `manifest.jsonl`, `dataset.json` and a
    LLaVA-style `conversations.json` (`[{"id", "image", "split", "conversations"}]`). Records
    without a scene are skipped and named in `skips`. Returns the number of records written."""
    source = Path(source)
    out = Path(out) if out is not None else source
    skips = skips if skips is not None else SkipLog()
    records = []
    for record in read_manifest(source, skips):
        if not is_shapes_record(record.attributes) or not record.attributes["objects"]:
            skips.skip(f"{source / 'manifest.jsonl'}: record {record.id}", "no ShapesWorld scene in its attributes")
            continue
        records.append(_rebased(add_questions(record, seed, per_family, turns), source, out))
    out.mkdir(parents=True, exist_ok=True)
    write_manifest(out / "manifest.jsonl", records)
    write_json(out / "conversations.json", [{"id": r.id, "image": r.image, "split": r.split,
                                              "conversations": r.attributes["conversations"]} for r in records])
    meta = read_meta(source) or {"kind": "shapesworld"}
    write_json(out / "dataset.json", {**meta, "qa": {"seed": seed, "per_family": per_family, "turns": turns,
                                                     "families": list(FAMILIES), "wordings": list(WORDINGS)}})
    return len(records)
