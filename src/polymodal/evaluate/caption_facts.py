"""Check generated captions and answers against ShapesWorld scenes, fact by fact.

A caption is parsed with the ShapesWorld grammar (the training and held-out wordings of
`data/synthetic/shapes.py`, every synonym): noun phrases ("a small red circle", "the red circle",
"the circle") become object mentions, a relation phrase between two of them ("is to the left of",
"sits on top of") a relation fact. Text the grammar does not cover is kept as unparsed spans and
counted; it never stops the parse.

Mentions are grounded in the scene one-to-one, an object only by a mention of its shape (the
object category, as CHAIR uses COCO's object words), choosing the grounding that agrees on the
most attributes. Then each stated fact is true or false:
- an object fact per mention (true where it is grounded), and a colour and a size fact per
  mention that states them (true where the grounded object has that colour / size);
- a relation fact per stated relation (true where both sides are grounded and the relation holds
  between their objects, along the dominant axis as the captions use it).
The scene's own facts, for recall, are each object's shape, colour and size, and the relations
along its chain (`attributes["relations"]`, what a ShapesWorld caption states). So a wrong colour
costs one colour fact, a reversed relation one relation fact, and an invented object its own
facts and a hallucinated mention (CHAIR-i: ungrounded mentions / mentions; Rohrbach et al. 2018).

`score_answers` scores free-form answers by exact match after normalising case, punctuation,
articles, number words (as digits) and the order of a list of objects.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from ..data.synthetic.shapes import COLOURS, HELDOUT_WORDS, INVERSE, RELATIONS, SHAPES, SIZES, TRAIN_WORDS, relation

FACT_KINDS = ("object", "colour", "size", "relation")


def _lexicon(canonical: Iterable[str]) -> dict[str, str]:
    """Every word or phrase (training and held-out synonyms) -> its canonical value."""
    out = {}
    for value in canonical:
        for phrase in [value, *TRAIN_WORDS.get(value, []), *HELDOUT_WORDS.get(value, [])]:
            out[phrase] = value
    return out


SIZE_WORDS, COLOUR_WORDS = _lexicon(SIZES), _lexicon(COLOURS)
SHAPE_WORDS, RELATION_WORDS = _lexicon(SHAPES), _lexicon(RELATIONS)


def _alternatives(words: Iterable[str]) -> str:
    return "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))  # longest phrase first


_ADJECTIVE = _alternatives([*SIZE_WORDS, *COLOUR_WORDS])
NOUN_PHRASE = re.compile(rf"\b(a|an|the)\s+((?:(?:{_ADJECTIVE})\s+)*)({_alternatives(SHAPE_WORDS)})\b")
# What may stand between two noun phrases: a separator of facts, or a relation phrase.
GAP = re.compile(rf"^\s*(?:[,;]\s*)?(?:(?:and|while)\s+)?(?:there is\s+)?(?:(?:is|sits)\s+)?"
                 rf"(?P<rel>{_alternatives(RELATION_WORDS)})?\s*$")
PREFIX = re.compile(r"^\s*(?:there is|an image of|a photo showing|this picture contains|in this picture)?\s*$")
SUFFIX = re.compile(r"^\s*(?:on its own)?\s*[.!]?\s*$")


@dataclass
class Mention:
    """One object a caption speaks of; None where the caption leaves the attribute unsaid."""

    shape: str
    colour: str | None = None
    size: str | None = None

    def compatible(self, other: Mention) -> bool:
        return self.shape == other.shape and all(
            a is None or b is None or a == b for a, b in ((self.colour, other.colour), (self.size, other.size)))


@dataclass
class ParsedCaption:
    mentions: list[Mention] = field(default_factory=list)
    relations: list[tuple[int, str, int]] = field(default_factory=list)  # (mention, relation, mention)
    unparsed: list[str] = field(default_factory=list)  # spans the grammar does not cover


def _adjectives(text: str) -> tuple[str | None, str | None] | None:
    """(size, colour) of an adjective list; None when it names two sizes or two colours."""
    size = colour = None
    for word in text.split():
        if word in SIZE_WORDS:
            if size is not None:
                return None
            size = SIZE_WORDS[word]
        else:
            if colour is not None:
                return None
            colour = COLOUR_WORDS[word]
    return size, colour


def _resolve(parsed: ParsedCaption, article: str, mention: Mention) -> int:
    """The mention's index: "the red circle" is the latest earlier mention it fits (its unsaid
    attributes filled from this one), "a red circle" always a new object."""
    if article == "the":
        for k in reversed(range(len(parsed.mentions))):
            earlier = parsed.mentions[k]
            if earlier.compatible(mention):
                earlier.colour = earlier.colour or mention.colour
                earlier.size = earlier.size or mention.size
                return k
    parsed.mentions.append(mention)
    return len(parsed.mentions) - 1


def parse_caption(caption: str) -> ParsedCaption:
    """Mentions, relations and unparsed spans of one caption (see the module's doc)."""
    text = caption.lower()
    parsed, previous, end = ParsedCaption(), None, 0
    for match in NOUN_PHRASE.finditer(text):
        gap = text[end:match.start()]
        adjectives = _adjectives(match.group(2))
        if adjectives is None:
            parsed.unparsed.append(match.group(0))
            previous, end = None, match.end()
            continue
        current = _resolve(parsed, match.group(1), Mention(SHAPE_WORDS[match.group(3)], adjectives[1], adjectives[0]))
        grammar = PREFIX.match(gap) if previous is None and end == 0 else GAP.match(gap)
        if grammar is None:
            parsed.unparsed.append(gap.strip())
        elif previous is not None and grammar.groupdict().get("rel"):
            parsed.relations.append((previous, RELATION_WORDS[grammar.group("rel")], current))
        previous, end = current, match.end()
    tail = text[end:]
    if not SUFFIX.match(tail):
        parsed.unparsed.append(tail.strip())
    return parsed


# ----------------------------------------------------------------------------------------------
# Grounding and scoring


def _agreement(mention: Mention, obj: dict) -> int:
    return (mention.colour == obj["colour"]) + (mention.size == obj["size"])


def ground(mentions: Sequence[Mention], objects: Sequence[dict]) -> dict[int, int]:
    """mention index -> scene object index, one-to-one, a mention only on an object of its shape:
    the most objects grounded, then the most attributes agreeing, then the earliest mentions.
    Searched exhaustively per shape (a scene holds at most three objects of one shape), among each
    object's k best mentions for k objects of that shape: a best grounding uses no other, so a
    caption that repeats one object sixty times costs no more than one that names it once."""
    out: dict[int, int] = {}
    for shape in {o["shape"] for o in objects}:
        scene = [i for i, o in enumerate(objects) if o["shape"] == shape]
        same = [m for m, mention in enumerate(mentions) if mention.shape == shape]
        best_for = [sorted(same, key=lambda m, i=i: (-_agreement(mentions[m], objects[i]), m))[:len(scene)]
                    for i in scene]
        candidates = sorted(set().union(*best_for)) + [None] * len(scene)
        best, best_key = (), None
        for choice in itertools.permutations(candidates, len(scene)):
            chosen = [m for m in choice if m is not None]
            if len(set(chosen)) < len(chosen):
                continue
            agreeing = sum(_agreement(mentions[m], objects[i]) for m, i in zip(choice, scene) if m is not None)
            key = (len(chosen), agreeing, -sum(chosen))
            if best_key is None or key > best_key:
                best, best_key = choice, key
        out |= {m: i for m, i in zip(best, scene) if m is not None}
    return out


def _ratio(num: int, den: int) -> float | None:
    return num / den if den else None


@dataclass
class FactCounts:
    """Counts behind fact precision, fact recall and CHAIR-i, per fact kind; they add up over
    captions (`+`), so aggregates are over all facts (micro-averaged), as CHAIR-i is."""

    stated: dict[str, int] = field(default_factory=lambda: dict.fromkeys(FACT_KINDS, 0))
    correct: dict[str, int] = field(default_factory=lambda: dict.fromkeys(FACT_KINDS, 0))
    scene: dict[str, int] = field(default_factory=lambda: dict.fromkeys(FACT_KINDS, 0))
    recalled: dict[str, int] = field(default_factory=lambda: dict.fromkeys(FACT_KINDS, 0))
    mentions: int = 0
    hallucinated: int = 0
    unparsed: int = 0  # spans of text the grammar does not cover
    captions: int = 1

    def __add__(self, other: FactCounts) -> FactCounts:
        both = FactCounts(mentions=self.mentions + other.mentions, hallucinated=self.hallucinated + other.hallucinated,
                          unparsed=self.unparsed + other.unparsed, captions=self.captions + other.captions)
        for name in ("stated", "correct", "scene", "recalled"):
            setattr(both, name, {k: getattr(self, name)[k] + getattr(other, name)[k] for k in FACT_KINDS})
        return both

    @property
    def precision(self) -> float | None:
        return _ratio(sum(self.correct.values()), sum(self.stated.values()))

    @property
    def recall(self) -> float | None:
        return _ratio(sum(self.recalled.values()), sum(self.scene.values()))

    @property
    def chair_i(self) -> float | None:
        return _ratio(self.hallucinated, self.mentions)

    def summary(self) -> dict:
        """The figures as JSON: overall, then per fact kind (None where there is nothing to count)."""
        out = {"fact_precision": self.precision, "fact_recall": self.recall, "chair_i": self.chair_i,
               "captions": self.captions, "mentions": self.mentions, "hallucinated": self.hallucinated,
               "unparsed_spans": self.unparsed}
        for k in FACT_KINDS:
            out[f"{k}_precision"] = _ratio(self.correct[k], self.stated[k])
            out[f"{k}_recall"] = _ratio(self.recalled[k], self.scene[k])
        return out


def _count_mentions(counts: FactCounts, parsed: ParsedCaption, objects: Sequence[dict], grounding: dict) -> None:
    """Object, colour and size facts, stated (precision) and recalled (recall)."""
    counts.mentions = len(parsed.mentions)
    counts.hallucinated = sum(m not in grounding for m in range(len(parsed.mentions)))
    for m, mention in enumerate(parsed.mentions):
        obj = objects[grounding[m]] if m in grounding else None
        counts.stated["object"] += 1
        counts.correct["object"] += obj is not None
        for attr in ("colour", "size"):
            said = getattr(mention, attr)
            if said is not None:
                counts.stated[attr] += 1
                right = obj is not None and obj[attr] == said
                counts.correct[attr] += right
                counts.recalled[attr] += right  # grounding is one-to-one: one mention per object
    counts.recalled["object"] = len(grounding)
    for k in ("object", "colour", "size"):
        counts.scene[k] = len(objects)


def _count_relations(counts: FactCounts, parsed: ParsedCaption, objects: Sequence[dict], scene_relations,
                     grounding: dict) -> None:
    """Relation facts: each distinct stated one checked; a scene relation recalled when a true
    stated relation joins its two objects (either way round: "B right of A" is "A left of B")."""
    joined = set()
    for i, rel, j in _distinct_relations(parsed):
        counts.stated["relation"] += 1
        if _relation_holds(i, rel, j, objects, grounding):
            counts.correct["relation"] += 1
            joined |= {(grounding[i], grounding[j]), (grounding[j], grounding[i])}
    counts.scene["relation"] = len(scene_relations)
    counts.recalled["relation"] = sum((i, j) in joined for i, _, j in scene_relations)


def _distinct_relations(parsed: ParsedCaption) -> set[tuple[int, str, int]]:
    """Stated relations, each once whichever way round it was said."""
    return {(i, rel, j) if (i, j) <= (j, i) else (j, INVERSE[rel], i) for i, rel, j in parsed.relations}


def _relation_holds(i: int, rel: str, j: int, objects: Sequence[dict], grounding: dict) -> bool:
    both = i in grounding and j in grounding and i != j
    return both and relation(objects[grounding[i]], objects[grounding[j]]) == rel


def stated_facts(caption: str, attributes: dict) -> list[tuple[str, str, bool]]:
    """Each fact a caption states, as (kind, its words, true?), the ones `score_caption` counts:
    "a red circle left of a square" -> ("object", "circle", True), ("colour", "red circle", False),
    ("object", "square", True), ("relation", "red circle left of square", True)."""
    parsed = parse_caption(caption)
    objects = attributes["objects"]
    grounding = ground(parsed.mentions, objects)
    words = [" ".join(w for w in (m.size, m.colour, m.shape) if w) for m in parsed.mentions]
    facts = []
    for m, mention in enumerate(parsed.mentions):
        obj = objects[grounding[m]] if m in grounding else None
        facts.append(("object", mention.shape, obj is not None))
        for attr in ("colour", "size"):
            said = getattr(mention, attr)
            if said is not None:
                facts.append((attr, f"{said} {mention.shape}", obj is not None and obj[attr] == said))
    facts += [("relation", f"{words[i]} {rel} {words[j]}", _relation_holds(i, rel, j, objects, grounding))
              for i, rel, j in sorted(_distinct_relations(parsed))]
    return facts


def score_caption(caption: str, attributes: dict) -> FactCounts:
    """Fact counts of one caption against one scene (a ShapesWorld record's attributes)."""
    parsed = parse_caption(caption)
    objects = attributes["objects"]
    grounding = ground(parsed.mentions, objects)
    counts = FactCounts(unparsed=len(parsed.unparsed))
    _count_mentions(counts, parsed, objects, grounding)
    _count_relations(counts, parsed, objects, attributes["relations"], grounding)
    return counts


def score_captions(captions: Sequence[str], scenes: Sequence[dict]) -> dict:
    """Aggregate fact precision, fact recall and CHAIR-i of captions, one per scene."""
    if len(captions) != len(scenes):
        raise ValueError(f"{len(captions)} captions for {len(scenes)} scenes")
    total = FactCounts(captions=0)
    for caption, scene in zip(captions, scenes):
        total = total + score_caption(caption, scene)
    return total.summary()


# ----------------------------------------------------------------------------------------------
# Exact-match answers


ARTICLES = frozenset({"a", "an", "the"})
DIGITS = {w: str(n) for n, w in enumerate(("zero", "one", "two", "three", "four", "five", "six", "seven", "eight",
                                           "nine", "ten"))}


def normalise_answer(text: str) -> str:
    """Lower case, no punctuation or articles, number words as digits, the objects of a list in
    sorted order: "Two." -> "2"; "a small red circle and a large blue square" -> "large blue
    square and small red circle"."""
    text = re.sub(r"[^\w\s]", " ", str(text).lower())
    words = [DIGITS.get(w, w) for w in text.split() if w not in ARTICLES]
    items = sorted(" ".join(part).strip() for part in _split_on(words, "and"))
    return " and ".join(i for i in items if i)


def _split_on(words: list[str], separator: str) -> list[list[str]]:
    parts: list[list[str]] = [[]]
    for w in words:
        if w == separator:
            parts.append([])
        else:
            parts[-1].append(w)
    return parts


def answers_match(prediction: str, answer: str) -> bool:
    return normalise_answer(prediction) == normalise_answer(answer)


def score_answers(questions: Sequence[dict], predictions: Sequence[str]) -> dict:
    """Exact-match accuracy overall, per question family, per wording, and on follow-up turns.
    `questions`: dicts with `answer` and optionally `family` (else Sort-of-CLEVR's `subtype`),
    `wording`, `followup` (as `data/synthetic/shapes_qa.py` makes them)."""
    if len(questions) != len(predictions):
        raise ValueError(f"{len(predictions)} predictions for {len(questions)} questions")
    groups: dict[str, dict[str, list[bool]]] = {"family": {}, "wording": {}}
    hits, followups = [], []
    for q, prediction in zip(questions, predictions):
        hit = answers_match(prediction, q["answer"])
        hits.append(hit)
        group = {"family": q.get("family") or q.get("subtype") or "unknown", "wording": q.get("wording", "unknown")}
        for key in groups:
            groups[key].setdefault(str(group[key]), []).append(hit)
        if q.get("followup"):
            followups.append(hit)
    return {"exact_match": _mean(hits), "questions": len(hits), "followup": _mean(followups),
            "followup_questions": len(followups),
            **{f"by_{key}": {k: _mean(v) for k, v in sorted(g.items())} for key, g in groups.items()}}


def _mean(hits: list[bool]) -> float | None:
    return sum(hits) / len(hits) if hits else None
