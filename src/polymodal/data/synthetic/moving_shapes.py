"""Moving-ShapesWorld: short clips of ShapesWorld objects that move, stay, grow or change colour,
each with captions stating what happens, for text-to-video models (issue 13).

A clip holds 1-2 objects with distinct colour-shape pairs, drawn by the ShapesWorld renderer's
shapes and palette over `frames` frames (default 8) at `image_size` pixels (default 32, to keep
video models cheap). Every object gets one event:

- "move": a straight line left, right, up or down, 8-12 px in all at 32 px (scaled with the
  image size), at constant speed, inside the frame throughout;
- "stay": it does not move;
- "grow": its radius rises evenly from ShapesWorld's "small" to "large" (3 to 5 px at 32 px);
- "recolour": it takes another palette colour at the middle frame (T // 2), a cut, not a blend,
  so that every frame holds palette colours only.

At 32 px the renderer draws at scale 0.5, so a small object has a radius of 3 px only: objects
are therefore always "large", except that a growing object starts "small". In a two-object clip
the first object does something (move, grow or recolour) and the second stays or moves; the two
never overlap in any frame.

Captions: "a red circle moves to the left while a blue square stays", "a green star moves up",
"a yellow square grows", "a white cross turns purple" (a few templates and synonyms). The truth
is in `attributes`: `objects` as they are at frame 0 (colour, shape, size, x, y: pixels at the
clip's size) and `events` ({"object": i, "event": "move", "direction": ..., "distance": px},
{"object": i, "event": "stay"}, {"object": i, "event": "grow"}, {"object": i, "event":
"recolour", "to": colour}); `render_clip` redraws a clip from them exactly.

On disk each clip is one lossless PNG filmstrip (the frames side by side, left to right) at
`clips/{split}/{id}.png`, named by `attributes["clip"]` (the record has no field for video), and
its first frame is the record's `image`, so image tools work on the dataset unchanged. Splits
are those of ShapesWorld; `test_unseen` holds at frame 0 a colour-shape pair that no other split
ever shows (`shapes.UNSEEN_COMBOS`), and a recolouring never makes one outside `test_unseen`.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ...utils import atomic_path, write_json
from ..schema import Record, write_manifest
from .chunks import run_chunks
from .shapes import COLOURS, SHAPES, SIZES, TRAIN_WORDS, UNSEEN_COMBOS, polygon

BACKGROUND = (20, 20, 24)  # the ShapesWorld renderer's
EVENTS = ("move", "stay", "grow", "recolour")
DIRECTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
OPPOSITE = {"left": "right", "right": "left", "up": "down", "down": "up"}
MOVE_RANGE = (8.0, 12.0)  # pixels travelled in a clip at 32 px
# The first object's event: moving in one of four directions is as likely as growing or recolouring.
ACTIVE_WEIGHTS = {"move": 4.0, "grow": 1.0, "recolour": 1.0}
SINGLE_STAY = 0.1  # the chance that a one-object clip shows it standing still

WORDS = {
    "move": ["moves", "slides", "goes"],
    "left": ["to the left", "left"],
    "right": ["to the right", "right"],
    "up": ["up", "upwards"],
    "down": ["down", "downwards"],
    "stay": ["stays", "stays still", "does not move", "stays put"],
    "grow": ["grows", "gets bigger", "grows larger"],
    "recolour": ["turns", "becomes", "changes to"],
}
TEMPLATES = {
    1: ["{e1}", "a clip where {e1}", "{e1} in this clip"],
    2: ["{e1} while {e2}", "{e1} and {e2}", "{e1}, while {e2}", "a clip where {e1} and {e2}"],
}


# ----------------------------------------------------------------------------------------------
# Clips


def sample_clip(rng: random.Random, combos: Sequence[tuple[str, str]], must_include: Sequence[tuple[str, str]] | None,
                frames: int = 8, image_size: int = 32) -> tuple[list[Image.Image], dict]:
    """One clip: its frames (PIL RGB images) and its attributes ({"objects", "events"}).

    `combos`: the colour-shape pairs objects may have (at frame 0 and after a recolouring);
    `must_include`: pairs of which one must be in the clip at frame 0 (`test_unseen`)."""
    attributes = sample_attributes(rng, combos, must_include, frames, image_size)
    return render_clip(attributes, frames, image_size), attributes


def sample_attributes(rng: random.Random, combos: Sequence[tuple[str, str]],
                      must_include: Sequence[tuple[str, str]] | None, frames: int = 8,
                      image_size: int = 32) -> dict:
    """The objects and events of one clip, without drawing it (see `sample_clip`)."""
    if frames < 2:
        raise ValueError(f"a clip needs at least 2 frames, not {frames}")
    combos = list(combos)
    while True:
        n = rng.randint(1, 2)
        pairs = rng.sample(combos, n)
        if must_include:
            forced = rng.choice(list(must_include))
            if forced not in pairs:
                pairs[rng.randrange(n)] = forced
        if len(set(pairs)) < n:
            continue
        events = [_active_event(rng, 0, pairs, combos)]
        if n == 1 and rng.random() < SINGLE_STAY:
            events = [{"object": 0, "event": "stay"}]
        if n == 2:
            events.append({"object": 1, "event": "stay"} if rng.random() < 0.5
                          else _move_event(rng, 1, image_size))
        if any(e is None for e in events):
            continue  # no colour to turn into: draw again
        objects = _place(rng, pairs, events, frames, image_size)
        if objects is not None:
            return {"objects": objects, "events": events}


def _active_event(rng: random.Random, i: int, pairs: list[tuple[str, str]], combos: list) -> dict | None:
    kind = rng.choices(list(ACTIVE_WEIGHTS), weights=list(ACTIVE_WEIGHTS.values()))[0]
    if kind == "move":
        return {"object": i, "event": "move"}  # direction and distance drawn in `_move_event`
    if kind == "grow":
        return {"object": i, "event": "grow"}
    colour, shape = pairs[i]
    taken = {c for c, _ in pairs}  # another object's colour would make the two hard to tell apart
    options = [c for c in COLOURS if c not in taken and (c, shape) in combos]
    return {"object": i, "event": "recolour", "to": rng.choice(options)} if options else None


def _move_event(rng: random.Random, i: int, image_size: int) -> dict:
    distance = round(rng.uniform(*MOVE_RANGE) * image_size / 32, 1)
    return {"object": i, "event": "move", "direction": rng.choice(list(DIRECTIONS)), "distance": distance}


def _place(rng: random.Random, pairs: list[tuple[str, str]], events: list[dict], frames: int,
           image_size: int) -> list[dict] | None:
    """Frame-0 positions for the objects such that each stays inside the frame and no two come
    near each other in any frame; None when 50 tries at one object fail."""
    for k, e in enumerate(events):
        if e["event"] == "move" and "direction" not in e:
            events[k] = _move_event(rng, e["object"], image_size)
    objects: list[dict] = []
    for (colour, shape), event in zip(pairs, events):
        size = "small" if event["event"] == "grow" else "large"
        r = SIZES["large"] * image_size / 64  # the largest radius it has in the clip
        dx, dy = _travel(event)
        for _ in range(50):
            x0 = rng.uniform(r + 1 - min(dx, 0), image_size - r - 1 - max(dx, 0))
            y0 = rng.uniform(r + 1 - min(dy, 0), image_size - r - 1 - max(dy, 0))
            cand = {"colour": colour, "shape": shape, "size": size, "x": round(x0, 1), "y": round(y0, 1)}
            if all(_apart(cand, event, o, e, frames, image_size) for o, e in zip(objects, events)):
                objects.append(cand)
                break
        else:
            return None
    return objects


def _travel(event: dict) -> tuple[float, float]:
    if event["event"] != "move":
        return 0.0, 0.0
    ux, uy = DIRECTIONS[event["direction"]]
    return ux * event["distance"], uy * event["distance"]


def _apart(a: dict, ea: dict, b: dict, eb: dict, frames: int, image_size: int) -> bool:
    gap = image_size / 16  # 2 px at 32: the two regions never touch, even diagonally
    for t in range(frames):
        (ax, ay, ar), (bx, by, br) = _state(a, ea, t, frames, image_size)[2:], _state(b, eb, t, frames, image_size)[2:]
        if math.hypot(ax - bx, ay - by) < ar + br + gap:
            return False
    return True


def _state(obj: dict, event: dict, t: int, frames: int, image_size: int) -> tuple[str, str, float, float, float]:
    """(colour, shape, x, y, radius) of an object at frame t."""
    f = t / (frames - 1)
    dx, dy = _travel(event)
    colour = event["to"] if event["event"] == "recolour" and t >= frames // 2 else obj["colour"]
    scale = image_size / 64
    r = SIZES[obj["size"]] * scale
    if event["event"] == "grow":
        r += (SIZES["large"] * scale - r) * f
    return colour, obj["shape"], obj["x"] + f * dx, obj["y"] + f * dy, r


def render_clip(attributes: dict, frames: int = 8, image_size: int = 32) -> list[Image.Image]:
    """The frames of a clip from its attributes, as `sample_clip` draws them."""
    by_object = {e["object"]: e for e in attributes["events"]}
    out = []
    for t in range(frames):
        img = Image.new("RGB", (image_size, image_size), BACKGROUND)
        draw = ImageDraw.Draw(img)
        for i, obj in enumerate(attributes["objects"]):
            colour, shape, x, y, r = _state(obj, by_object.get(i, {"event": "stay"}), t, frames, image_size)
            if shape == "circle":
                draw.ellipse((x - r, y - r, x + r, y + r), fill=COLOURS[colour])
            else:
                draw.polygon(polygon(shape, x, y, r), fill=COLOURS[colour])
        out.append(img)
    return out


# ----------------------------------------------------------------------------------------------
# Captions


def describe_clip(attributes: dict, rng: random.Random, canonical: bool = False) -> str:
    """One caption stating every object's event, with random wording (`canonical`: the first
    template and synonym of each, so that two clips' captions differ only where the clips do)."""

    def word(w: str) -> str:
        options = WORDS.get(w) or TRAIN_WORDS.get(w) or [w]
        draw = rng.random()  # one draw per word, whatever the number of synonyms
        return options[0] if canonical else options[int(draw * len(options))]

    objects = attributes["objects"]
    phrases = []
    for e in attributes["events"]:
        o = objects[e["object"]]
        colour = word(o["colour"])
        noun = f"{'an' if colour[0] in 'aeiou' else 'a'} {colour} {word(o['shape'])}"
        if e["event"] == "move":
            phrases.append(f"{noun} {word('move')} {word(e['direction'])}")
        elif e["event"] == "recolour":
            phrases.append(f"{noun} {word('recolour')} {word(e['to'])}")
        else:
            phrases.append(f"{noun} {word(e['event'])}")
    if len(phrases) == 2 and rng.random() < 0.5 and not canonical:
        phrases.reverse()
    templates = TEMPLATES[len(phrases)]
    template = templates[0] if canonical else rng.choice(templates)
    return template.format(**{f"e{k}": p for k, p in enumerate(phrases, 1)})


# ----------------------------------------------------------------------------------------------
# Files


def clip_key(attributes: dict) -> tuple:
    """What a caption of the clip can state: each object's colour and shape with its event (and
    direction or new colour). Clips with equal keys answer a caption equally well (retrieval's
    relevance)."""
    objects = attributes["objects"]
    return tuple(sorted((objects[e["object"]]["colour"], objects[e["object"]]["shape"], e["event"],
                         e.get("direction") or e.get("to") or "") for e in attributes["events"]))


def filmstrip(frames: Sequence[Image.Image] | np.ndarray) -> Image.Image:
    """The frames side by side, left to right, as one image."""
    arr = _as_array(frames)
    return Image.fromarray(np.concatenate(list(arr), axis=1))


def load_clip(path: str | Path, frames: int | None = None) -> np.ndarray:
    """A filmstrip PNG split into its frames: (T, H, W, 3) uint8. `frames` defaults to the
    strip's width over its height (square frames)."""
    strip = np.asarray(Image.open(path).convert("RGB"))
    height, width = strip.shape[:2]
    frames = frames or width // height
    if frames < 1 or width % frames:
        raise ValueError(f"{path}: a strip {width} px wide does not split into {frames} frames")
    return np.stack(np.split(strip, frames, axis=1))


def save_clip_gif(frames: Sequence[Image.Image] | np.ndarray, path: str | Path, fps: float = 4.0) -> Path:
    """An animated GIF (looping, `fps` frames a second) written whole or not at all.

    Pillow's GIF writer folds a frame equal to the one before it into that one, which would
    leave a still clip with one frame: such a frame is written with one corner pixel one level
    off in blue, invisible, so that the file always holds every frame."""
    import imageio.v3 as iio

    arr = _as_array(frames).copy()
    for t in range(1, len(arr)):
        if np.array_equal(arr[t], arr[t - 1]):
            arr[t, 0, 0, 2] ^= 1
    path = Path(path)
    with atomic_path(path) as tmp:
        iio.imwrite(tmp, arr, extension=".gif", duration=1000 / fps, loop=0)
    return path


def _as_array(frames: Sequence[Image.Image] | np.ndarray) -> np.ndarray:
    if isinstance(frames, np.ndarray):
        return frames.astype(np.uint8)
    return np.stack([np.asarray(f.convert("RGB") if isinstance(f, Image.Image) else f) for f in frames])


# ----------------------------------------------------------------------------------------------
# The generator


@dataclass
class MovingShapesConfig:
    n_train: int = 4000
    n_val: int = 200
    n_test: int = 400
    n_unseen: int = 400
    frames: int = 8
    image_size: int = 32
    captions_per_clip: int = 3
    seed: int = 0


CHUNK = 250  # clips per work unit; each unit has its own seed, so output is independent of workers


def split_combos(split: str) -> tuple[list[tuple[str, str]], list[tuple[str, str]] | None]:
    """(the colour-shape pairs a split's clips may hold, the pairs one of which each must hold)."""
    seen = [(c, s) for c in COLOURS for s in SHAPES if (c, s) not in UNSEEN_COMBOS]
    if split == "test_unseen":
        return seen + list(UNSEEN_COMBOS), list(UNSEEN_COMBOS)
    return seen, None


def _generate_chunk(args) -> list[dict]:
    out_dir, split, start, count, seed, frames, image_size, n_captions = args
    rng = random.Random(f"moving/{seed}/{split}/{start}")
    combos, must = split_combos(split)
    records = []
    for idx in range(start, start + count):
        clip, attributes = sample_clip(rng, combos, must, frames, image_size)
        rec_id = f"{split}-{idx:07d}"
        image_path, clip_path = f"images/{split}/{rec_id}.png", f"clips/{split}/{rec_id}.png"
        clip[0].save(Path(out_dir) / image_path, compress_level=1)
        filmstrip(clip).save(Path(out_dir) / clip_path, compress_level=1)
        captions = [describe_clip(attributes, rng) for _ in range(n_captions)]
        attributes = {**attributes, "clip": clip_path}
        records.append(Record(id=rec_id, split=split, image=image_path, text=captions, attributes=attributes).to_json())
    return records


def generate(out: str | Path, config: MovingShapesConfig, workers: int | None = None, progress: bool = True) -> Path:
    """Write a Moving-ShapesWorld dataset directory (images/, clips/, manifest.jsonl, dataset.json)."""
    out = Path(out)
    sizes = {"train": config.n_train, "val": config.n_val, "test": config.n_test, "test_unseen": config.n_unseen}
    jobs = []
    for split, n in sizes.items():
        for folder in ("images", "clips"):
            (out / folder / split).mkdir(parents=True, exist_ok=True)
        jobs += [(str(out), split, s, min(CHUNK, n - s), config.seed, config.frames, config.image_size,
                  config.captions_per_clip) for s in range(0, n, CHUNK)]
    records = run_chunks(_generate_chunk, jobs, sum(sizes.values()), "generating Moving-ShapesWorld", workers,
                         progress)
    write_manifest(out / "manifest.jsonl", (Record.from_json(r) for r in records))
    meta = {
        # "generic": the records have no ShapesWorld relations, so ShapesWorld's probes do not apply
        "generator": "moving_shapes", "kind": "generic", "version": 1, **config.__dict__, "splits": sizes,
        "clip_format": "filmstrip", "colours": list(COLOURS), "shapes": list(SHAPES), "events": list(EVENTS),
        "directions": list(DIRECTIONS), "unseen_combos": [list(c) for c in UNSEEN_COMBOS],
    }
    write_json(out / "dataset.json", meta)
    return out
