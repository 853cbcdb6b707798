"""Sort-of-CLEVR (Santoro et al. 2017): 75x75 images of 6 coloured squares and circles, each
with 10 relational and 10 non-relational questions.

As in the paper and its public re-implementations: one object per colour (red, green, blue,
orange, grey, yellow), each a square or a circle of size 10 px on white, at random non-overlapping
positions. Non-relational questions ask for the shape of the object of a colour, or whether it is
on the left / at the top; relational ones for the shape of the object closest to / furthest from
it, or how many objects share its shape. Each question is stored both as the paper's 11-number
encoding (6 colour one-hot, 2 question type, 3 subtype) and as English text. The scene
(`attributes.objects`) is kept in every record, so answers can be recomputed from it, with a
description of it (`attributes.description`: "red square top left, green circle bottom right, ..."),
which the chat model's first stage trains on where captions would be.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ..schema import Record, write_manifest

IMAGE_SIZE = 75
HALF = 5  # half the side of a square, radius of a circle (pixels)
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255),
    "orange": (255, 156, 0), "grey": (128, 128, 128), "yellow": (255, 255, 0),
}
SHAPES = ("square", "circle")
ANSWERS = ("yes", "no", "square", "circle", "1", "2", "3", "4", "5", "6")
NON_RELATIONAL = ("shape", "left", "top")
RELATIONAL = ("closest", "furthest", "count")
TEMPLATES = {
    "shape": "what is the shape of the {c} object?",
    "left": "is the {c} object on the left?",
    "top": "is the {c} object at the top?",
    "closest": "what is the shape of the object closest to the {c} object?",
    "furthest": "what is the shape of the object furthest from the {c} object?",
    "count": "how many objects have the same shape as the {c} object?",
}


@dataclass
class SortOfClevrConfig:
    n_train: int = 9800  # the paper's split: 9,800 training and 200 test images
    n_val: int = 200
    n_test: int = 200
    questions_per_type: int = 10  # relational and non-relational questions per image, each
    seed: int = 0


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


def render(objects: list[dict]) -> Image.Image:
    img = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    for o in objects:
        box = (o["x"] - HALF, o["y"] - HALF, o["x"] + HALF, o["y"] + HALF)
        (draw.rectangle if o["shape"] == "square" else draw.ellipse)(box, fill=COLOURS[o["colour"]])
    return img


def answer(objects: list[dict], colour: str, subtype: str) -> str:
    """The answer to a question about the object of `colour`, computed from the scene."""
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


def describe(objects: list[dict]) -> str:
    """Each object's colour, shape and quadrant, in the fixed colour order: the facts the
    non-relational questions ask about, said for every object at once."""
    def where(o: dict) -> str:
        return ("top " if o["y"] < IMAGE_SIZE / 2 else "bottom ") + ("left" if o["x"] < IMAGE_SIZE / 2 else "right")

    return ", ".join(f"{o['colour']} {o['shape']} {where(o)}" for o in objects)


def encode(colour: str, subtype: str) -> list[int]:
    """The paper's fixed-length question: colour one-hot (6), type one-hot (2), subtype one-hot (3)."""
    relational = subtype in RELATIONAL
    kinds = RELATIONAL if relational else NON_RELATIONAL
    vec = [0] * 11
    vec[list(COLOURS).index(colour)] = 1
    vec[6 + int(relational)] = 1
    vec[8 + kinds.index(subtype)] = 1
    return vec


def make_questions(objects: list[dict], rng: np.random.Generator, per_type: int) -> list[dict]:
    questions = []
    for relational, kinds in ((False, NON_RELATIONAL), (True, RELATIONAL)):
        for _ in range(per_type):
            colour = list(COLOURS)[int(rng.integers(len(COLOURS)))]
            subtype = kinds[int(rng.integers(len(kinds)))]
            questions.append({"text": TEMPLATES[subtype].format(c=colour), "encoding": encode(colour, subtype),
                              "answer": answer(objects, colour, subtype), "relational": relational,
                              "subtype": subtype, "colour": colour})
    return questions


def generate(out: str | Path, config: SortOfClevrConfig, progress: bool = True) -> Path:
    """Write `images/*.png`, `manifest.jsonl` and `dataset.json` to `out`. Image i of the whole
    dataset depends only on (seed, i), so the same config always gives the same files."""
    from ...utils import atomic_path, progress_bar, write_json

    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    splits = [("train", config.n_train), ("val", config.n_val), ("test", config.n_test)]
    total = sum(n for _, n in splits)
    records, index = [], 0
    with progress_bar(progress) as bar:
        task = bar.add_task("rendering Sort-of-CLEVR", total=total)
        for split, n in splits:
            for _ in range(n):
                rng = np.random.default_rng([config.seed, index])
                objects = sample_scene(rng)
                questions = make_questions(objects, rng, config.questions_per_type)
                name = f"images/{index:06d}.png"
                with atomic_path(out / name) as tmp:
                    render(objects).save(tmp, format="PNG")
                records.append(Record(id=f"{index:06d}", split=split, image=name,
                                      text=[q["text"] for q in questions], labels=[q["answer"] for q in questions],
                                      attributes={"objects": objects, "questions": questions,
                                                  "description": describe(objects)}))
                index += 1
                bar.advance(task)
    write_manifest(out / "manifest.jsonl", records)
    meta = {"name": "sort-of-clevr", "config": asdict(config), "answers": list(ANSWERS),
            "splits": {s: n for s, n in splits}}
    write_json(out / "dataset.json", meta)
    return out
