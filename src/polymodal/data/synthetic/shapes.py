"""ShapesWorld: a synthetic image-caption world with known ground truth.

Each image holds 1-3 objects, each with a colour, a shape, a size and a position. The captions
state a fixed set of *facts* about the scene (every object, and the spatial relation along a
chain of object pairs), phrased with several templates and synonyms. Because the facts are stored
in each record, evaluation can tell exactly which images a caption describes, and probes can build
captions that differ in one fact only (colours swapped, relation reversed), as in ARO.

`test_unseen` holds colour-shape combinations that never occur in train/val/test, for measuring
compositional generalisation.
"""

from __future__ import annotations

import itertools
import math
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ...utils import write_json
from ..kinds import DATASET_KINDS, AttributeTask, DatasetKind
from ..schema import Record, write_manifest
from .chunks import run_chunks

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (50, 90, 235),
    "yellow": (235, 220, 50),
    "purple": (150, 60, 200),
    "orange": (245, 140, 30),
    "cyan": (40, 210, 210),
    "white": (235, 235, 235),
}
SHAPES = ("circle", "square", "triangle", "diamond", "cross", "star")
SIZES = {"small": 6.0, "large": 10.0}  # circumradius in pixels at 64x64
RELATIONS = ("left of", "right of", "above", "below")
INVERSE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
QUARTER_TURN = {"left of": ("above", "below"), "right of": ("above", "below"),
                "above": ("left of", "right of"), "below": ("left of", "right of")}

# One colour-shape pair per colour never appears in training; they make up `test_unseen`.
UNSEEN_COMBOS = tuple((c, SHAPES[i % len(SHAPES)]) for i, c in enumerate(COLOURS))

# Wording. Training captions draw from TRAIN_*; the held-out wording (HELDOUT_*) only appears in
# `attributes["rephrased"]` of evaluation records, to test robustness to unseen phrasing.
TRAIN_WORDS = {
    "small": ["small", "little"],
    "large": ["large", "big"],
    "circle": ["circle", "disc"],
    "square": ["square"],
    "triangle": ["triangle"],
    "diamond": ["diamond", "rhombus"],
    "cross": ["cross", "plus"],
    "star": ["star"],
    "purple": ["purple", "violet"],
    "left of": ["left of", "to the left of"],
    "right of": ["right of", "to the right of"],
    "above": ["above", "over"],
    "below": ["below", "under"],
}
HELDOUT_WORDS = {
    "small": ["tiny"],
    "large": ["huge"],
    "square": ["box"],
    "circle": ["dot"],
    "left of": ["on the left side of"],
    "right of": ["on the right side of"],
    "above": ["on top of"],
    "below": ["beneath"],
}
# {a}: the single object; {f1}, {f2}: fact phrases ("X left of Y"); {f1_is}: "X is left of Y".
TRAIN_TEMPLATES = {
    1: ["{a}", "there is {a}", "an image of {a}", "{a} on its own"],
    2: ["{f1}", "there is {f1}", "{f1_is}", "an image of {f1}"],
    3: ["{f1}, and {f2}", "there is {f1}, and {f2_is}", "{f1_is} and {f2_is}", "{f1}; {f2}"],
}
HELDOUT_TEMPLATES = {
    1: ["a photo showing {a}", "this picture contains {a}"],
    2: ["a photo showing {f1}", "in this picture {f1_sits}"],
    3: ["a photo showing {f1} while {f2_sits}"],
}


@dataclass(frozen=True)
class Obj:
    colour: str
    shape: str
    size: str
    x: float
    y: float


def relation(a: dict | Obj, b: dict | Obj) -> str:
    """Where `a` is relative to `b`, along the dominant axis (image y grows downwards)."""
    ax, ay, bx, by = _xy(a) + _xy(b)
    dx, dy = ax - bx, ay - by
    if abs(dx) >= abs(dy):
        return "left of" if dx < 0 else "right of"
    return "above" if dy < 0 else "below"


def _xy(o) -> tuple[float, float]:
    return (o.x, o.y) if isinstance(o, Obj) else (o["x"], o["y"])


# ----------------------------------------------------------------------------------------------
# Scenes


def sample_scene(rng: random.Random, combos: list[tuple[str, str]], must_include: list[tuple[str, str]] | None,
                 image_size: int) -> list[Obj]:
    """1-3 objects with distinct colour-shape pairs, non-overlapping, every pair with a clear
    dominant axis (so that every relation word is unambiguous)."""
    n = rng.randint(1, 3)
    scale = image_size / 64
    while True:
        pairs = rng.sample(combos, n)
        if must_include:
            forced = rng.choice(must_include)
            if forced not in pairs:
                pairs[rng.randrange(n)] = forced
        if len(set(pairs)) < n:
            continue
        objs: list[Obj] = []
        for colour, shape in pairs:
            size = rng.choice(tuple(SIZES))
            r = SIZES[size] * scale
            for _ in range(50):
                x, y = rng.uniform(r + 1, image_size - r - 1), rng.uniform(r + 1, image_size - r - 1)
                cand = Obj(colour, shape, size, round(x, 1), round(y, 1))
                if all(_well_separated(cand, o, scale) for o in objs):
                    objs.append(cand)
                    break
            else:
                break  # could not place this object: resample the scene
        if len(objs) == n:
            return objs


def _well_separated(a: Obj, b: Obj, scale: float) -> bool:
    dx, dy = abs(a.x - b.x), abs(a.y - b.y)
    gap = (SIZES[a.size] + SIZES[b.size]) * scale + 2 * scale
    major, minor = max(dx, dy), min(dx, dy)
    return major >= gap and major >= 1.6 * minor


def scene_facts(objs: list[Obj]) -> list[list]:
    """The relations a caption states: along a chain of the objects in their stored order."""
    return [[i, relation(objs[i], objs[i + 1]), i + 1] for i in range(len(objs) - 1)]


# ----------------------------------------------------------------------------------------------
# Rendering


def polygon(shape: str, x: float, y: float, r: float) -> list[tuple[float, float]]:
    if shape == "square":
        s = r / math.sqrt(2)
        return [(x - s, y - s), (x + s, y - s), (x + s, y + s), (x - s, y + s)]
    if shape == "triangle":
        return [(x + r * math.cos(a), y + r * math.sin(a)) for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)]
    if shape == "diamond":
        return [(x, y - r), (x + 0.7 * r, y), (x, y + r), (x - 0.7 * r, y)]
    if shape == "star":
        pts = []
        for k in range(10):
            rad = r if k % 2 == 0 else 0.45 * r
            a = -math.pi / 2 + k * math.pi / 5
            pts.append((x + rad * math.cos(a), y + rad * math.sin(a)))
        return pts
    if shape == "cross":
        t = 0.33 * r
        return [(x - t, y - r), (x + t, y - r), (x + t, y - t), (x + r, y - t), (x + r, y + t), (x + t, y + t),
                (x + t, y + r), (x - t, y + r), (x - t, y + t), (x - r, y + t), (x - r, y - t), (x - t, y - t)]
    raise ValueError(f"unknown shape {shape}")


def render(objs: list[Obj], image_size: int = 64) -> Image.Image:
    img = Image.new("RGB", (image_size, image_size), (20, 20, 24))
    draw = ImageDraw.Draw(img)
    scale = image_size / 64
    for o in objs:
        r = SIZES[o.size] * scale
        if o.shape == "circle":
            draw.ellipse((o.x - r, o.y - r, o.x + r, o.y + r), fill=COLOURS[o.colour])
        else:
            draw.polygon(polygon(o.shape, o.x, o.y, r), fill=COLOURS[o.colour])
    return img


# ----------------------------------------------------------------------------------------------
# Captions


def describe(objects: list[dict], facts: list[list], rng: random.Random, heldout: bool = False,
             canonical: bool = False, omit_colour: int | None = None) -> str:
    """One caption stating every object and every fact, with random wording (`canonical`: the
    first synonym of every word, so that two scenes' captions differ only where the scenes do;
    `omit_colour`: the object whose colour goes unsaid, named by its shape alone)."""
    words = HELDOUT_WORDS if heldout else TRAIN_WORDS

    def word(w: str) -> str:
        # Exactly one draw per word, whatever the number of synonyms: two captions built from
        # the same seed then share their wording even when they name different colours.
        options = words.get(w) or TRAIN_WORDS.get(w) or [w]
        draw = rng.random()
        return options[0] if canonical else options[int(draw * len(options))]

    mentioned: set[int] = set()

    def noun(i: int) -> str:
        o = objects[i]
        colour = word(o["colour"]) + " "  # drawn even when omitted, so later words keep their draws
        colour = "" if i == omit_colour else colour
        if i in mentioned:  # colour-shape pairs are unique in a scene, so "the red circle" is too
            return f"the {colour}{word(o['shape'])}"
        mentioned.add(i)
        return f"a {word(o['size'])} {colour}{word(o['shape'])}"

    template = rng.choice((HELDOUT_TEMPLATES if heldout else TRAIN_TEMPLATES)[len(objects)])
    if len(objects) == 1:
        return template.format(a=noun(0))
    phrases = {}
    for n, (i, rel, j) in enumerate(facts, 1):
        if len(facts) == 1 and rng.random() < 0.5:
            i, rel, j = j, INVERSE[rel], i  # "B right of A" states the same fact as "A left of B"
        x, r, y = noun(i), word(rel), noun(j)
        phrases |= {f"f{n}": f"{x} {r} {y}", f"f{n}_is": f"{x} is {r} {y}", f"f{n}_sits": f"{x} sits {r} {y}"}
    return template.format(**phrases)


def counterfactual(attributes: dict, kind: str, rng: random.Random) -> tuple[list[dict], list[list]] | None:
    """The scene's objects and facts with one thing changed, or None where `kind` does not apply.

    kinds: "swap_colours" (two objects exchange colours: attribute binding), "swap_shapes" (two
    objects exchange shapes), "swap_relation" (the two sides of one relation exchanged: relation
    order), "replace_relation" (one relation turned a quarter: "left of" -> "above"),
    "replace_colour", "replace_shape", "replace_size" (one attribute of one object changed).
    """
    objects = [dict(o) for o in attributes["objects"]]
    facts = [list(f) for f in attributes["relations"]]
    n = len(objects)
    if kind in ("swap_colours", "swap_shapes"):
        attr = "colour" if kind == "swap_colours" else "shape"
        pairs = [(a, b) for a in range(n) for b in range(a + 1, n) if objects[a][attr] != objects[b][attr]]
        if not pairs:
            return None
        a, b = rng.choice(pairs)
        objects[a][attr], objects[b][attr] = objects[b][attr], objects[a][attr]
    elif kind in ("swap_relation", "replace_relation"):
        if not facts:
            return None
        f = rng.choice(facts)
        if kind == "swap_relation":
            f[0], f[2] = f[2], f[0]
        else:  # the other axis: false, since every stated relation is along the pair's dominant axis
            f[1] = rng.choice(QUARTER_TURN[f[1]])
    elif kind.startswith("replace_"):
        attr = kind.removeprefix("replace_")
        values = {"colour": list(COLOURS), "shape": list(SHAPES), "size": list(SIZES)}[attr]
        o = rng.choice(objects)
        o[attr] = rng.choice([v for v in values if v != o[attr]])
    else:
        raise ValueError(f"unknown counterfactual kind '{kind}'")
    if len({(o["colour"], o["shape"]) for o in objects}) < n:
        return None  # two identical objects would make "the red circle" ambiguous
    return objects, facts


# Swaps weigh double: they are the negatives that only word order can tell apart.
NEGATIVE_WEIGHTS = {"swap_colours": 2.0, "swap_relation": 2.0, "swap_shapes": 2.0, "replace_colour": 1.0,
                    "replace_shape": 1.0, "replace_size": 1.0, "replace_relation": 1.0}


def hard_negatives(attributes: dict, rng: random.Random, count: int = 1,
                   known_pairs: set[tuple[str, str]] | None = None) -> list[str]:
    """Up to `count` captions that each contradict the scene in one fact, each of another kind
    (NegCLIP-style hard negatives; several a scene make them dense).

    `known_pairs`: the colour-shape pairs the training images hold. A negative naming any other
    pair is not used: it would teach that such a pair never matches an image. Trained with them,
    the demo's model found 0.12 less R@1 on `test_unseen` than on `test` (2,000 images each);
    without them 0.01, the probes unchanged (benchmarks/README.md)."""
    # A weighted random order of the kinds (Efraimidis-Spirakis keys); those that apply are used.
    kinds = sorted(NEGATIVE_WEIGHTS, key=lambda k: rng.random() ** (1 / NEGATIVE_WEIGHTS[k]), reverse=True)
    out = []
    for kind in kinds:
        changed = counterfactual(attributes, kind, rng)
        if changed is not None and known_pairs is not None:
            changed = changed if all((o["colour"], o["shape"]) in known_pairs for o in changed[0]) else None
        if changed is not None:
            out.append(describe(*changed, rng))
            if len(out) == count:
                break
    return out


# ----------------------------------------------------------------------------------------------
# Probe pairs (ARO, SugarCrepe) and Winoground-style image pairs


ARO_PROBES = ("attribute_binding", "relation_order")
SUGARCREPE_FAMILIES = ("replace_attribute", "replace_object", "replace_relation", "swap_attribute", "swap_object",
                       "add_attribute")
WINOGROUND_KINDS = ("swap_colours", "swap_relation")

# SugarCrepe-style families (Hsieh et al., 2023) and the ARO probes, as counterfactual kinds.
PROBE_KINDS = {
    "attribute_binding": ("swap_colours",),  # ARO VG-Attribution
    "relation_order": ("swap_relation",),  # ARO VG-Relation
    "replace_attribute": ("replace_colour", "replace_size"),
    "replace_object": ("replace_shape",),
    "replace_relation": ("replace_relation",),
    "swap_attribute": ("swap_colours",),
    "swap_object": ("swap_shapes",),
    "add_attribute": ("add_colour",),
}


def probe_pair(attributes: dict, family: str, seed: str) -> tuple[str, str] | None:
    """(true caption, false caption) for a scene, differing only as `family` says, in the same
    canonical wording; None where the family does not apply to the scene."""
    rng = random.Random(f"probe/{seed}")
    kind = rng.choice(PROBE_KINDS[family])
    if kind == "add_colour":
        return _added_colour_pair(attributes, rng, seed)
    changed = counterfactual(attributes, kind, rng)
    if changed is None:
        return None
    true = describe(attributes["objects"], attributes["relations"], random.Random(seed), canonical=True)
    return true, describe(*changed, random.Random(seed), canonical=True)


def _added_colour_pair(attributes: dict, rng: random.Random, seed: str) -> tuple[str, str] | None:
    """SugarCrepe's add-attribute: the true caption leaves one object's colour unsaid, the false
    one adds a wrong colour. The object's shape must be unique, so that "the circle" names it."""
    objects = attributes["objects"]
    shapes_in_scene = [o["shape"] for o in objects]
    unique = [i for i, o in enumerate(objects) if shapes_in_scene.count(o["shape"]) == 1]
    if not unique:
        return None
    k = rng.choice(unique)
    recoloured = [dict(o) for o in objects]
    recoloured[k]["colour"] = rng.choice([c for c in COLOURS if c != objects[k]["colour"]])
    facts = attributes["relations"]
    true = describe(objects, facts, random.Random(seed), canonical=True, omit_colour=k)
    return true, describe(recoloured, facts, random.Random(seed), canonical=True)


def winoground_pair(attributes: dict, kind: str, seed: str, image_size: int = 64):
    """Two scenes and two captions with the same words, each caption true of its own scene only
    (Thrush et al., 2022): "swap_colours" recolours the second scene, "swap_relation" exchanges the
    objects' places. Two-object scenes only: with three, "the red circle" repeats one object's
    words, so the two captions would not share every word. Returns ((image0, caption0),
    (image1, caption1)) as rendered PIL images, or None where the kind does not apply."""
    rng = random.Random(f"winoground/{seed}")
    objects = attributes["objects"]
    if len(objects) != 2:
        return None
    changed = counterfactual(attributes, kind, rng)
    if changed is None:
        return None
    other = [dict(o) for o in changed[0]]
    if kind == "swap_relation":
        other = _exchange_places(objects, image_size)
        if other is None:
            return None
    scene1 = {"objects": other, "relations": changed[1]}
    if satisfies(scene1, attributes) or not satisfies(scene1, {"objects": changed[0], "relations": changed[1]}):
        return None
    captions = [describe(*scene, random.Random(seed), canonical=True)
                for scene in ((objects, attributes["relations"]), changed)]
    images = [render([Obj(**o) for o in scene], image_size) for scene in (objects, other)]
    return (images[0], captions[0]), (images[1], captions[1])


def _exchange_places(objects: list[dict], image_size: int) -> list[dict] | None:
    """The two objects at each other's places, kept inside the frame; None if the relation
    between them would not be the reverse of the original."""
    a, b = (dict(o) for o in objects)
    a["x"], a["y"], b["x"], b["y"] = b["x"], b["y"], a["x"], a["y"]
    for o in (a, b):
        r = SIZES[o["size"]] * image_size / 64
        o["x"], o["y"] = (min(max(v, r + 1), image_size - r - 1) for v in (o["x"], o["y"]))
    if relation(a, b) != INVERSE[relation(*objects)]:
        return None
    return [a, b]


# ----------------------------------------------------------------------------------------------
# GenEval-style prompts (Ghosh et al., 2023): short, first synonyms, no sizes


PROMPT_CATEGORIES = ("single_object", "two_objects", "counting", "colours", "position", "colour_attribution")
NUMBER_WORDS = ("zero", "one", "two", "three")
# Which two objects a two-object prompt may name: two_objects and colour_attribution need different
# shapes (and colour_attribution different colours too), else swapping colours would keep it true.
PAIR_RULES = {
    "two_objects": lambda a, b: a["shape"] != b["shape"],
    "position": lambda a, b: True,
    "colour_attribution": lambda a, b: a["shape"] != b["shape"] and a["colour"] != b["colour"],
}


def scene_prompt(objects: list[dict], category: str, rng: random.Random) -> dict | None:
    """A prompt of `category` that is true of the scene, or None where the category cannot apply.

    The spec keeps what a checker needs: each named object's shape, colour (None when unsaid) and
    count (at least that many; exactly that many for "counting"), and for "position" the relation
    [i, rel, j] between the named objects. One draw from `rng` per call."""
    if category not in PROMPT_CATEGORIES:
        raise ValueError(f"unknown prompt category '{category}' (one of {', '.join(PROMPT_CATEGORIES)})")
    if category == "counting":
        shape = rng.choice(objects)["shape"]  # drawn by object, so a shape the scene repeats comes up more
        count = sum(o["shape"] == shape for o in objects)
        noun = shape if count == 1 else shape + ("es" if shape.endswith("s") else "s")
        return _prompt_spec(f"{NUMBER_WORDS[count]} {noun}", category, [(None, shape, count)])
    if category in ("single_object", "colours"):
        chosen = [rng.choice(objects)]
    else:
        pairs = [(a, b) for a in objects for b in objects if a is not b and PAIR_RULES[category](a, b)]
        if not pairs:
            return None
        chosen = list(rng.choice(pairs))
    coloured = category not in ("single_object", "two_objects")
    named = [(o["colour"] if coloured else None, o["shape"], 1) for o in chosen]
    nouns = [_prompt_noun(colour, shape) for colour, shape, _ in named]
    if category == "position":
        rel = relation(*chosen)
        return _prompt_spec(f"{nouns[0]} {rel} {nouns[1]}", category, named, [0, rel, 1])
    return _prompt_spec(" and ".join(nouns), category, named)


def _prompt_noun(colour: str | None, shape: str) -> str:
    words = f"{colour} {shape}" if colour else shape
    return f"{'an' if words[0] in 'aeiou' else 'a'} {words}"  # "an orange star"


def _prompt_spec(text: str, category: str, named: list[tuple], rel: list | None = None) -> dict:
    objects = [{"shape": shape, "colour": colour, "count": count} for colour, shape, count in named]
    return {"text": text, "category": category, "objects": objects, "relation": rel}


def prompt_captions(objects: list[dict], rng: random.Random, n: int) -> list[str]:
    """`n` prompts true of the scene, each of a category drawn evenly from those that apply: extra
    training captions, so that a text-to-image model learns the phrasing it is scored on."""
    out: list[str] = []
    while len(out) < n:  # single_object always applies, so this ends
        spec = scene_prompt(objects, rng.choice(PROMPT_CATEGORIES), rng)
        if spec is not None:
            out.append(spec["text"])
    return out


# ----------------------------------------------------------------------------------------------
# Matching captions to scenes (the retrieval ground truth)


def object_key(attributes: dict) -> tuple:
    return tuple(sorted((o["size"], o["colour"], o["shape"]) for o in attributes["objects"]))


def satisfies(scene: dict, described: dict) -> bool:
    """Does `scene` (attributes of an image) make every fact of `described` true?"""
    if object_key(scene) != object_key(described):
        return False
    where = {(o["size"], o["colour"], o["shape"]): o for o in scene["objects"]}
    objs = described["objects"]
    for i, rel, j in described["relations"]:
        a = where[(objs[i]["size"], objs[i]["colour"], objs[i]["shape"])]
        b = where[(objs[j]["size"], objs[j]["colour"], objs[j]["shape"])]
        if relation(a, b) != rel:
            return False
    return True


# ----------------------------------------------------------------------------------------------
# The generator


@dataclass
class ShapesConfig:
    n_train: int = 10000
    n_val: int = 500
    n_test: int = 1000
    n_unseen: int = 1000
    image_size: int = 64
    captions_per_image: int = 5
    seed: int = 0
    prompt_captions: int = 0  # GenEval-style prompts appended to each training record's captions


CHUNK = 500  # images per work unit; each unit has its own seed, so output is independent of workers


def _generate_chunk(args) -> list[dict]:
    out_dir, split, start, count, seed, image_size, n_captions, n_prompts = args
    rng = random.Random(f"{seed}/{split}/{start}")
    seen = [(c, s) for c in COLOURS for s in SHAPES if (c, s) not in UNSEEN_COMBOS]
    combos, must = (list(seen) + list(UNSEEN_COMBOS), list(UNSEEN_COMBOS)) if split == "test_unseen" else (seen, None)
    records = []
    for idx in range(start, start + count):
        objs = sample_scene(rng, combos, must, image_size)
        rec_id = f"{split}-{idx:07d}"
        rel_path = f"images/{split}/{rec_id}.png"
        render(objs, image_size).save(Path(out_dir) / rel_path, compress_level=1)
        objects = [{"colour": o.colour, "shape": o.shape, "size": o.size, "x": o.x, "y": o.y} for o in objs]
        attributes = {"objects": objects, "relations": scene_facts(objs)}
        captions = [describe(objects, attributes["relations"], rng) for _ in range(n_captions)]
        # Training captions only: retrieval scoring matches an evaluation caption to whole scenes.
        # Their own rng, so the other captions stay as they were without them.
        if n_prompts and split == "train":
            captions += prompt_captions(objects, random.Random(f"{seed}/{split}/{idx}/prompts"), n_prompts)
        if split != "train":
            attributes["rephrased"] = [describe(objects, attributes["relations"], rng, heldout=True) for _ in range(2)]
        records.append(Record(id=rec_id, split=split, image=rel_path, text=captions, attributes=attributes).to_json())
    return records


def generate(out: str | Path, config: ShapesConfig, workers: int | None = None, progress: bool = True) -> Path:
    """Write a ShapesWorld dataset directory (images, manifest.jsonl, dataset.json)."""

    out = Path(out)
    sizes = {"train": config.n_train, "val": config.n_val, "test": config.n_test, "test_unseen": config.n_unseen}
    jobs = []
    for split, n in sizes.items():
        (out / "images" / split).mkdir(parents=True, exist_ok=True)
        jobs += [(str(out), split, s, min(CHUNK, n - s), config.seed, config.image_size, config.captions_per_image,
                  config.prompt_captions) for s in range(0, n, CHUNK)]
    records = run_chunks(_generate_chunk, jobs, sum(sizes.values()), "generating ShapesWorld", workers, progress)
    write_manifest(out / "manifest.jsonl", (Record.from_json(r) for r in records))
    settings = {k: v for k, v in config.__dict__.items() if k != "prompt_captions" or v}  # as before when 0
    meta = {
        "generator": "shapes", "kind": "shapesworld", "version": 1, **settings, "splits": sizes,
        "colours": list(COLOURS), "shapes": list(SHAPES), "sizes": list(SIZES),
        "unseen_combos": [list(c) for c in UNSEEN_COMBOS],
    }
    write_json(out / "dataset.json", meta)
    return out


def is_shapes_record(attributes: dict) -> bool:
    return isinstance(attributes, dict) and "objects" in attributes and "relations" in attributes


# ----------------------------------------------------------------------------------------------
# ShapesWorld as a dataset kind: what training and evaluation ask of it


ATTRIBUTE_VALUES = {"colour": list(COLOURS), "shape": list(SHAPES), "size": list(SIZES)}


def object_prompts() -> tuple[list[dict], list[list[str]]]:
    """Every single-object description (size x colour x shape), each in every 1-object template."""
    objects, prompts = [], []
    for size, colour, shape in itertools.product(ATTRIBUTE_VALUES["size"], ATTRIBUTE_VALUES["colour"],
                                                 ATTRIBUTE_VALUES["shape"]):
        obj = {"size": size, "colour": colour, "shape": shape, "x": 0, "y": 0}
        objects.append(obj)
        rng = random.Random(f"{size}{colour}{shape}")
        prompts.append([describe([obj], [], rng) for _ in range(len(TRAIN_TEMPLATES[1]) * 2)])
    return objects, prompts


class ShapesWorldKind(DatasetKind):
    """Records that keep their scene (`attributes.objects` and `.relations`): a caption is relevant
    to every image whose scene makes its facts true, training gets counterfactual captions as hard
    negatives, zero-shot classifies colour, shape and size of one-object images, and the ARO,
    SugarCrepe- and Winoground-style probes are built from the scene."""

    name = "shapesworld"
    probe_families = ARO_PROBES + SUGARCREPE_FAMILIES
    winoground_kinds = WINOGROUND_KINDS

    def accepts(self, records) -> bool:
        return bool(records) and all(is_shapes_record(r.attributes) for r in records)

    def relevant_images(self, records) -> list[np.ndarray]:
        """Two scenes with the same description match each other's captions."""
        groups: dict[tuple, list[int]] = {}
        for i, r in enumerate(records):
            groups.setdefault(object_key(r.attributes), []).append(i)
        return [np.array([j for j in groups[object_key(r.attributes)]
                          if satisfies(records[j].attributes, r.attributes)])
                for r in records]

    def negative_sampler(self, records):
        # The colour-shape pairs these images hold: hard negatives name no other (see hard_negatives).
        known = {(o["colour"], o["shape"]) for r in records for o in r.attributes["objects"]}
        return lambda index, count, rng: hard_negatives(records[index].attributes, rng, count, known)

    def attribute_task(self, records) -> AttributeTask:
        """Colour, shape and size of the one-object images, from the 96 object descriptions."""
        single = [i for i, r in enumerate(records) if len(r.attributes["objects"]) == 1]
        objects, prompts = object_prompts()
        truth = {a: [records[i].attributes["objects"][0][a] for i in single] for a in ATTRIBUTE_VALUES}
        candidates = [{a: o[a] for a in ATTRIBUTE_VALUES} for o in objects]
        return AttributeTask(ATTRIBUTE_VALUES, candidates, prompts, single, truth)

    def probe_pair(self, record, family: str) -> tuple[str, str] | None:
        return probe_pair(record.attributes, family, record.id)

    def winoground_item(self, record, kind: str, image_size: int):
        return winoground_pair(record.attributes, kind, record.id, image_size)


SHAPESWORLD = DATASET_KINDS.register("shapesworld", ShapesWorldKind())
