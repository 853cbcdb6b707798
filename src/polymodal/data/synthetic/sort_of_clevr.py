"""Sort-of-CLEVR (Santoro et al. 2017): 75x75 images of 6 coloured squares and circles, each
with 10 relational and 10 non-relational questions (and, when asked, 10 ternary ones).

As in the paper and its public re-implementations: one object per colour (red, green, blue,
orange, grey, yellow), each a square or a circle of size 10 px on white, at random non-overlapping
positions. Non-relational questions ask for the shape of the object of a colour, or whether it is
on the left / at the top; relational ones for the shape of the object closest to / furthest from
it, or how many objects share its shape; ternary ones (the public generator's third family, see
`ternary_answer`) name two objects and ask about the other four. Each question is stored both as
the paper's 11-number encoding (6 colour one-hot, 2 question type, 3 subtype; with ternary
questions the public generator's 18 numbers, see `encode`) and as English text. The scene
(`attributes.objects`) is kept in every record, so answers can be recomputed from it, with a
description of it (`attributes.description`: "red square top left, green circle bottom right, ..."),
which the chat model's first stage trains on where captions would be.

Each image is drawn with one of several rendering variants (`sort_of_clevr_render.py`: PIL or
OpenCV primitives, anti-aliasing, size and colour jitter, blur, JPEG noise), so that an answer
depends on the scene, not on the rasteriser; `render="pil"` is the exact renderer of before. The
variants draw on their own random stream: the scenes and questions of a seed do not depend on them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..schema import Record, write_manifest
from .sort_of_clevr_render import HALF, HELDOUT, IMAGE_SIZE, draw_pil, render_variant, render_variants

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255),
    "orange": (255, 156, 0), "grey": (128, 128, 128), "yellow": (255, 255, 0),
}
SHAPES = ("square", "circle")
ANSWERS = ("yes", "no", "square", "circle", "1", "2", "3", "4", "5", "6")
TERNARY_ANSWERS = (*ANSWERS, "0")  # ternary counts start at 0 (no other object between the two)
NON_RELATIONAL = ("shape", "left", "top")
RELATIONAL = ("closest", "furthest", "count")
TERNARY = ("between", "line", "obtuse")
FAMILIES = {"non-relational": NON_RELATIONAL, "relational": RELATIONAL, "ternary": TERNARY}
LINE_BAND = 12  # "on the line": centre within this many pixels above or below it (the public generator's)
TEMPLATES = {
    "shape": "what is the shape of the {c} object?",
    "left": "is the {c} object on the left?",
    "top": "is the {c} object at the top?",
    "closest": "what is the shape of the object closest to the {c} object?",
    "furthest": "what is the shape of the object furthest from the {c} object?",
    "count": "how many objects have the same shape as the {c} object?",
    "between": "how many objects are between the {c} object and the {c2} object?",
    "line": "is there an object on the line through the {c} object and the {c2} object?",
    "obtuse": "how many objects form an obtuse triangle with the {c} object and the {c2} object?",
}
RENDER_STREAM = 1  # the rendering variants' random stream is seeded (seed, image, RENDER_STREAM)


@dataclass
class SortOfClevrConfig:
    n_train: int = 9800  # the paper's split: 9,800 training and 200 test images
    n_val: int = 200
    n_test: int = 200
    questions_per_type: int = 10  # questions of each family per image
    seed: int = 0
    # "mixed": each image drawn with a random training variant; "pil": the exact renderer of
    # before; "heldout": the variants kept out of training; or variant names, comma-separated
    # (see sort_of_clevr_render.VARIANTS).
    render: str = "mixed"
    n_heldout: int = 0  # images of split "test_heldout", drawn only with the held-out variants
    # The third question family (two colours; between / on the line / obtuse triangle). Off by
    # default: the lab's "relational" accuracy and the paper's numbers it is compared with cover
    # the binary relations only.
    ternary: bool = False


def family_of(subtype: str) -> str:
    return next(name for name, kinds in FAMILIES.items() if subtype in kinds)


def sample_scene(rng: np.random.Generator) -> list[dict]:
    """One object per colour, centres at least 2*HALF apart (as in the public generator)."""
    objects: list[dict] = []
    for colour in COLOURS:
        while True:
            x, y = (int(v) for v in rng.integers(HALF, IMAGE_SIZE - HALF, size=2))
            if all((x - o["x"]) ** 2 + (y - o["y"]) ** 2 >= (2 * HALF) ** 2 for o in objects):
                break
        objects.append({"colour": colour, "shape": SHAPES[int(rng.integers(2))], "x": x, "y": y})
    return objects


def render(objects: list[dict]):
    """The exact renderer (PIL, no anti-aliasing, the named colours): a 75x75 RGB PIL image."""
    return draw_pil(objects, [HALF] * len(objects), [COLOURS[o["colour"]] for o in objects])


def answer(objects: list[dict], colour: str, subtype: str, colour2: str | None = None) -> str:
    """The answer to a question about the object of `colour` (and, for a ternary question, the
    object of `colour2`), computed from the scene."""
    if subtype in TERNARY:
        return ternary_answer(objects, colour, colour2, subtype)
    me = next(o for o in objects if o["colour"] == colour)
    if subtype == "shape":
        return me["shape"]
    if subtype == "left":
        return "yes" if me["x"] < IMAGE_SIZE / 2 else "no"
    if subtype == "top":
        return "yes" if me["y"] < IMAGE_SIZE / 2 else "no"
    others = [o for o in objects if o is not me]
    if subtype == "count":
        return str(sum(o["shape"] == me["shape"] for o in objects))
    dist = [(o["x"] - me["x"]) ** 2 + (o["y"] - me["y"]) ** 2 for o in others]
    pick = dist.index(min(dist)) if subtype == "closest" else dist.index(max(dist))
    return others[pick]["shape"]


def ternary_answer(objects: list[dict], colour: str, colour2: str, subtype: str) -> str:
    """Ternary questions, as the public generator defines them. A and B are the centres of the two
    named objects, C runs over the centres of the other four; all in integer pixels, so exact.

    - between: how many C lie in the closed axis-aligned rectangle with opposite corners A and B
      ("0" to "4").
    - line: "yes" when some C lies in the vertical band of LINE_BAND px around the straight line
      through A and B: |(Cy - Ay)(Bx - Ax) - (By - Ay)(Cx - Ax)| <= LINE_BAND * |Bx - Ax|, which is
      |Cy - y_line(Cx)| <= LINE_BAND where the line is not vertical, and Cx == Ax where it is.
    - obtuse: how many C make a triangle ABC whose largest angle is at least 90 degrees (a right
      angle counts, as in the public generator); C on the line through A and B makes no triangle.
      The angle at vertex V with neighbours P, Q is >= 90 degrees exactly when (P - V).(Q - V) <= 0.

    The public generator computes "line" and "obtuse" in floating point (slopes, arccos), so on exact
    ties (a right angle, a centre exactly LINE_BAND px off the line, three collinear centres) and on
    vertical lines its answer can differ from these exact ones: about 0.3 % of such questions.
    """
    a = next(o for o in objects if o["colour"] == colour)
    b = next(o for o in objects if o["colour"] == colour2)
    (ax, ay), (bx, by) = (a["x"], a["y"]), (b["x"], b["y"])
    others = [(o["x"], o["y"]) for o in objects if o is not a and o is not b]
    if subtype == "between":
        inside = [min(ax, bx) <= cx <= max(ax, bx) and min(ay, by) <= cy <= max(ay, by) for cx, cy in others]
        return str(sum(inside))
    if subtype == "line":
        near = [abs((cy - ay) * (bx - ax) - (by - ay) * (cx - ax)) <= LINE_BAND * abs(bx - ax) for cx, cy in others]
        return "yes" if any(near) else "no"

    def dot(v, p, q):  # (p - v) . (q - v)
        return (p[0] - v[0]) * (q[0] - v[0]) + (p[1] - v[1]) * (q[1] - v[1])

    A, B = (ax, ay), (bx, by)
    obtuse = [(bx - ax) * (c[1] - ay) != (by - ay) * (c[0] - ax)  # not collinear
              and min(dot(A, B, c), dot(B, A, c), dot(c, A, B)) <= 0 for c in others]
    return str(sum(obtuse))


def describe(objects: list[dict]) -> str:
    """Each object's colour, shape and quadrant, in the fixed colour order: the facts the
    non-relational questions ask about, said for every object at once."""
    def where(o: dict) -> str:
        return ("top " if o["y"] < IMAGE_SIZE / 2 else "bottom ") + ("left" if o["x"] < IMAGE_SIZE / 2 else "right")

    return ", ".join(f"{o['colour']} {o['shape']} {where(o)}" for o in objects)


def encode(colour: str, subtype: str, colour2: str | None = None, wide: bool = False) -> list[int]:
    """The paper's fixed-length question: colour one-hot (6), type one-hot (2: non-relational,
    relational), subtype one-hot (3). `wide`: the public generator's 18 numbers, which ternary
    questions need: colour one-hot (6), second colour one-hot (6), type one-hot (3: non-relational,
    relational, ternary), subtype one-hot (3)."""
    family = family_of(subtype)
    if family == "ternary" and not wide:
        raise ValueError("ternary questions need the wide (18-number) encoding")
    colours, families = list(COLOURS), list(FAMILIES)
    vec = [0] * (18 if wide else 11)
    vec[colours.index(colour)] = 1
    if colour2 is not None:
        vec[6 + colours.index(colour2)] = 1
    type_at = 12 if wide else 6
    vec[type_at + families.index(family)] = 1
    vec[type_at + (3 if wide else 2) + FAMILIES[family].index(subtype)] = 1
    return vec


def decode(vec) -> tuple[str, str | None, str]:
    """(colour, second colour or None, subtype) of an 11- or 18-number question (`encode`'s
    inverse). Raises ValueError for a vector that is not one."""
    bits = [float(v) for v in vec]
    if len(bits) not in (11, 18) or any(v not in (0.0, 1.0) for v in bits):
        raise ValueError(f"a question must be 11 or 18 numbers, each 0 or 1 (got {len(bits)})")
    wide = len(bits) == 18
    type_at = 12 if wide else 6
    n_types = 3 if wide else 2

    def one(lo: int, hi: int, what: str) -> int | None:
        hot = [i for i in range(lo, hi) if bits[i]]
        if len(hot) > 1:
            raise ValueError(f"more than one {what} in the question")
        return hot[0] - lo if hot else None

    names, families = list(COLOURS), list(FAMILIES)
    colour, colour2 = one(0, 6, "colour"), one(6, 12, "second colour") if wide else None
    family, sub = one(type_at, type_at + n_types, "type"), one(type_at + n_types, type_at + n_types + 3, "subtype")
    if colour is None or family is None or sub is None:
        raise ValueError("the question has no colour, type or subtype")
    if (colour2 is not None) != (family == 2):
        raise ValueError("a ternary question names two colours, the others one")
    return names[colour], None if colour2 is None else names[colour2], FAMILIES[families[family]][sub]


def make_question(objects: list[dict], colour: str, subtype: str, colour2: str | None, wide: bool) -> dict:
    family = family_of(subtype)
    q = {"text": TEMPLATES[subtype].format(c=colour, c2=colour2), "encoding": encode(colour, subtype, colour2, wide),
         "answer": answer(objects, colour, subtype, colour2), "relational": family != "non-relational",
         "family": family, "subtype": subtype, "colour": colour}
    if colour2 is not None:
        q["colour2"] = colour2
    return q


def make_questions(objects: list[dict], rng: np.random.Generator, per_type: int, ternary: bool = False) -> list[dict]:
    """`per_type` questions of each family, family by family (the ternary ones last, so that adding
    them leaves the random draws of the others, and so their questions, as they were)."""
    colours, questions = list(COLOURS), []
    for kinds in (NON_RELATIONAL, RELATIONAL):
        for _ in range(per_type):
            colour = colours[int(rng.integers(len(colours)))]
            subtype = kinds[int(rng.integers(len(kinds)))]
            questions.append(make_question(objects, colour, subtype, None, wide=ternary))
    for _ in range(per_type if ternary else 0):
        first, second = (colours[int(i)] for i in rng.choice(len(colours), size=2, replace=False))
        subtype = TERNARY[int(rng.integers(len(TERNARY)))]
        questions.append(make_question(objects, first, subtype, second, wide=True))
    return questions


def generate(out: str | Path, config: SortOfClevrConfig, progress: bool = True) -> Path:
    """Write `images/*.png`, `manifest.jsonl` and `dataset.json` to `out`. Image i of the whole
    dataset depends only on (seed, i), so the same config always gives the same files."""
    from ...utils import atomic_path, progress_bar, write_json

    variants = render_variants(config.render)
    if config.n_heldout and set(variants) & set(HELDOUT):
        raise ValueError(f"render '{config.render}' uses a held-out variant ({', '.join(HELDOUT)}), "
                         "so split test_heldout would not be held out")
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    splits = [("train", config.n_train), ("val", config.n_val), ("test", config.n_test),
              ("test_heldout", config.n_heldout)]
    splits = [(s, n) for s, n in splits if n or s != "test_heldout"]
    total = sum(n for _, n in splits)
    records, index = [], 0
    with progress_bar(progress) as bar:
        task = bar.add_task("rendering Sort-of-CLEVR", total=total)
        for split, n in splits:
            for _ in range(n):
                rng = np.random.default_rng([config.seed, index])
                objects = sample_scene(rng)
                questions = make_questions(objects, rng, config.questions_per_type, config.ternary)
                look = np.random.default_rng([config.seed, index, RENDER_STREAM])
                colours = [COLOURS[o["colour"]] for o in objects]
                image, how = render_variant(objects, colours, look, HELDOUT if split == "test_heldout" else variants)
                name = f"images/{index:06d}.png"
                with atomic_path(out / name) as tmp:
                    image.save(tmp, format="PNG")
                records.append(Record(id=f"{index:06d}", split=split, image=name,
                                      text=[q["text"] for q in questions], labels=[q["answer"] for q in questions],
                                      attributes={"objects": objects, "questions": questions,
                                                  "description": describe(objects), "render": how}))
                index += 1
                bar.advance(task)
    write_manifest(out / "manifest.jsonl", records)
    meta = {"name": "sort-of-clevr", "config": asdict(config),
            "answers": list(TERNARY_ANSWERS if config.ternary else ANSWERS),
            "families": [f for f in FAMILIES if config.ternary or f != "ternary"],
            "render_variants": {"train, val, test": list(variants),
                                "test_heldout": list(HELDOUT) if config.n_heldout else []},
            "splits": {s: n for s, n in splits}}
    write_json(out / "dataset.json", meta)
    return out
