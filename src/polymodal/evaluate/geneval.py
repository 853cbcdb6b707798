"""GenEval-style scoring of text-to-image models on ShapesWorld (Ghosh et al., 2023; issue 13).

GenEval asks a generator for short prompts in six categories (single object, two objects,
counting, colours, position, colour attribution), checks each image with an object detector, and
reports each category's accuracy and their mean. Here the prompts are drawn from test scenes
(`shapes.scene_prompt`), so every prompt is satisfiable and has a true scene beside it, and the
detector is the exact ShapesWorld checker (`scene_checker.detect`), so a failure is the
generator's, not the detector's.
"""

from __future__ import annotations

import random
from collections import Counter

from ..data.synthetic.shapes import PROMPT_CATEGORIES, UNSEEN_COMBOS, relation, scene_prompt
from .scene_checker import Detection, detect

COLOUR_CATEGORIES = ("colours", "position", "colour_attribution")  # those whose prompts name colours
MAX_PASSES = 50  # passes over the records (fresh draws each) to fill a category from few records


def prompt_set(records, per_category: int, seed: int = 0, unseen_only: bool = False) -> list[dict]:
    """`per_category` prompt specs of each category that the records' scenes support, each true of
    one scene (its index in `records` kept as the spec's "source", so that the true image can be
    shown or scored beside the generated one). `records`: `Record`s or dicts with "attributes".

    `unseen_only`: only prompts naming a colour-shape pair held out of training (`UNSEEN_COMBOS`),
    hence only the categories that name colours: the compositional-generalisation set.
    Deterministic for a seed and the records' order."""
    rng = random.Random(f"geneval/{seed}")
    scenes = [(r.attributes if hasattr(r, "attributes") else r["attributes"])["objects"] for r in records]
    out: list[dict] = []
    for category in COLOUR_CATEGORIES if unseen_only else PROMPT_CATEGORIES:
        # Counting draws from every scene, so that the rare "two"/"three" scenes can be balanced in.
        wanted = max(per_category, len(scenes)) if category == "counting" else per_category
        pool = _pool(scenes, category, rng, wanted, unseen_only)
        out += _spread_counts(pool)[:per_category] if category == "counting" else pool[:per_category]
    return out


def _pool(scenes: list[list[dict]], category: str, rng: random.Random, wanted: int, unseen_only: bool) -> list[dict]:
    """Specs of `category` from the scenes in a random order, passing over them again (with new
    draws) until `wanted` are found, or a pass finds none (the category does not apply)."""
    pool: list[dict] = []
    for _ in range(MAX_PASSES):
        found = 0
        for i in rng.sample(range(len(scenes)), len(scenes)):
            spec = scene_prompt(scenes[i], category, rng)
            if spec is None or (unseen_only and not names_unseen(spec)):
                continue
            pool.append({**spec, "source": i})
            found += 1
            if len(pool) == wanted:
                return pool
        if not found:
            break
    return pool


def _spread_counts(pool: list[dict]) -> list[dict]:
    """The counting specs reordered to take each count in turn (one, two, three, one, ...): most
    scenes hold one object of a shape, and a counting set of mostly "one X" would test little more
    than single_object (GenEval's counting asks for two to four)."""
    rank: Counter = Counter()
    keyed = []
    for spec in pool:
        count = spec["objects"][0]["count"]
        keyed.append((rank[count], count, spec))
        rank[count] += 1
    return [spec for *_, spec in sorted(keyed, key=lambda k: k[:2])]


def names_unseen(spec: dict) -> bool:
    """Whether a prompt names a colour-shape pair that training never showed."""
    return any((o["colour"], o["shape"]) in UNSEEN_COMBOS for o in spec["objects"])


def satisfied(detections: list[Detection], spec: dict) -> bool:
    """GenEval's rules on the checker's detections: each named object present (with its colour
    where the prompt names one), exactly `count` of it for counting and at least that many
    otherwise; for position, the stated relation between the centres of the largest detection of
    each (GenEval takes the most confident), along the dominant axis as ShapesWorld states it."""
    found = []
    for o in spec["objects"]:
        matches = [d for d in detections if d.shape == o["shape"] and o["colour"] in (None, d.colour)]
        if len(matches) < o["count"] or (spec["category"] == "counting" and len(matches) != o["count"]):
            return False
        found.append(max(matches, key=lambda d: d.area))
    if spec.get("relation"):
        i, rel, j = spec["relation"]
        return relation(*({"x": found[k].x, "y": found[k].y} for k in (i, j))) == rel
    return True


def score(images, specs: list[dict]) -> dict[str, float]:
    """Accuracy per category present (the fraction of images that satisfy their prompt) and
    "overall", the mean of the category accuracies: GenEval weighs every category alike, however
    many prompts it has. `images[k]` was generated for `specs[k]` (PIL images or HxWx3 arrays,
    square, of any side: the checker draws its references at the size it is given)."""
    hits: dict[str, list[bool]] = {}
    for image, spec in zip(images, specs, strict=True):
        hits.setdefault(spec["category"], []).append(satisfied(detect(image), spec))
    if not hits:
        raise ValueError("no prompts to score")
    out = {c: sum(hits[c]) / len(hits[c]) for c in PROMPT_CATEGORIES if c in hits}
    out["overall"] = sum(out.values()) / len(out)
    return out
