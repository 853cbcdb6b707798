"""Rendering variants of Sort-of-CLEVR scenes, so that a model learns the scene, not one rasteriser.

A variant is a set of drawing primitives and the noise drawn on top of them:

| variant | primitives | jitter, blur, JPEG |
| --- | --- | --- |
| pil | PIL, aliased, exact colours: the renderer of before | none |
| pil-jitter | PIL, aliased | yes |
| pil-aa | PIL at 4x, box-filtered down (supersampling anti-aliasing) | yes |
| opencv | `cv2.rectangle` / `cv2.circle`, aliased (LINE_8, octagon-like circles), as the public generator draws | yes |
| opencv-aa | `cv2.rectangle` / `cv2.circle` with LINE_AA, and always JPEG at quality 40-60 | held out |

"mixed" (the training default) picks one of the first four per image; "heldout" is opencv-aa, whose
anti-aliasing and JPEG quality no training image has. Jitter: each object's half-size changes by
-1, 0 or +1 px, and each channel of its colour by up to COLOUR_JITTER (so orange, yellow and red
stay apart); blur: a Gaussian of sigma 0.3-0.7 px on half the images; JPEG: re-encoding at quality
75-95 on half the images. The images stay PNG files; the JPEG round trip only adds its artefacts.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

IMAGE_SIZE = 75
HALF = 5  # half the side of a square, radius of a circle (pixels)
COLOUR_JITTER = 12  # per channel, out of 255
SUPERSAMPLE = 4
BLUR_SIGMA = (0.3, 0.7)
WHITE = (255, 255, 255)


@dataclass(frozen=True)
class Variant:
    draw: str  # "pil", "pil-ss" (supersampled), "cv2" (LINE_8) or "cv2-aa" (LINE_AA)
    jitter: bool = True  # object size and colour jitter
    blur_p: float = 0.5  # probability of a Gaussian blur
    jpeg_p: float = 0.5  # probability of a JPEG round trip
    jpeg_quality: tuple[int, int] = (75, 95)  # inclusive range


VARIANTS = {
    "pil": Variant("pil", jitter=False, blur_p=0.0, jpeg_p=0.0),
    "pil-jitter": Variant("pil"),
    "pil-aa": Variant("pil-ss"),
    "opencv": Variant("cv2"),
    "opencv-aa": Variant("cv2-aa", jpeg_p=1.0, jpeg_quality=(40, 60)),
}
MIXED = ("pil", "pil-jitter", "pil-aa", "opencv")
HELDOUT = ("opencv-aa",)
ALIASES = {"mixed": MIXED, "heldout": HELDOUT}


def render_variants(spec: str) -> tuple[str, ...]:
    """The variant names of a `render` setting: "mixed", "heldout", or names joined by commas."""
    names: list[str] = []
    for part in (p.strip() for p in spec.split(",")):
        for name in ALIASES.get(part, (part,)):
            if name not in VARIANTS:
                raise ValueError(f"unknown render variant '{name}' (known: mixed, heldout, {', '.join(VARIANTS)})")
            if name not in names:
                names.append(name)
    if not names:
        raise ValueError("render needs at least one variant")
    return tuple(names)


def render_variant(objects: list[dict], colours: list[tuple[int, int, int]], rng: np.random.Generator,
                   variants: tuple[str, ...]) -> tuple[Image.Image, dict]:
    """Draw `objects` (each in its RGB colour of `colours`) with a variant picked from `variants` by
    `rng`: the 75x75 RGB image and what was done ({"variant", "blur" (sigma, 0: none), "jpeg"
    (quality, None: none)})."""
    name = variants[int(rng.integers(len(variants)))]
    v = VARIANTS[name]
    halves = [HALF] * len(objects)
    if v.jitter:
        halves, colours = _jitter(colours, rng)
    image = DRAW[v.draw](objects, halves, colours)
    blur, quality = 0.0, None
    if rng.random() < v.blur_p:
        blur = round(float(rng.uniform(*BLUR_SIGMA)), 2)
        image = image.filter(ImageFilter.GaussianBlur(blur))
    if rng.random() < v.jpeg_p:
        quality = int(rng.integers(v.jpeg_quality[0], v.jpeg_quality[1] + 1))
        image = _jpeg_round_trip(image, quality)
    return image, {"variant": name, "blur": blur, "jpeg": quality}


def _jitter(colours: list[tuple[int, int, int]], rng: np.random.Generator) -> tuple[list[int], list[tuple]]:
    """Each object's half-size moved by -1, 0 or +1 px and each channel of its colour by up to COLOUR_JITTER."""
    halves = [HALF + int(d) for d in rng.integers(-1, 2, size=len(colours))]
    shifts = rng.integers(-COLOUR_JITTER, COLOUR_JITTER + 1, size=(len(colours), 3))
    return halves, [tuple(int(c) for c in np.clip(np.add(rgb, s), 0, 255)) for rgb, s in zip(colours, shifts)]


def draw_pil(objects: list[dict], halves: list[int], colours: list[tuple], scale: int = 1) -> Image.Image:
    """PIL's aliased rectangle / ellipse filling pixels x-h .. x+h; at `scale` > 1 drawn that many
    times larger and box-filtered back down (each pixel the mean of its scale x scale samples)."""
    size = IMAGE_SIZE * scale
    img = Image.new("RGB", (size, size), WHITE)
    draw = ImageDraw.Draw(img)
    for o, h, colour in zip(objects, halves, colours):
        # Pixels x-h .. x+h inclusive, as scale x scale blocks.
        box = ((o["x"] - h) * scale, (o["y"] - h) * scale, (o["x"] + h + 1) * scale - 1, (o["y"] + h + 1) * scale - 1)
        (draw.rectangle if o["shape"] == "square" else draw.ellipse)(box, fill=colour)
    return img if scale == 1 else img.resize((IMAGE_SIZE, IMAGE_SIZE), Image.BOX)


def draw_cv2(objects: list[dict], halves: list[int], colours: list[tuple], antialias: bool = False) -> Image.Image:
    """OpenCV's filled rectangle / circle on a (75, 75, 3) uint8 array, as the public generator
    draws (it draws BGR; here the array is RGB, which the primitives do not care about)."""
    import cv2

    line = cv2.LINE_AA if antialias else cv2.LINE_8
    img = np.full((IMAGE_SIZE, IMAGE_SIZE, 3), 255, dtype=np.uint8)
    for o, h, colour in zip(objects, halves, colours):
        x, y = o["x"], o["y"]
        if o["shape"] == "square":
            cv2.rectangle(img, (x - h, y - h), (x + h, y + h), colour, thickness=-1, lineType=line)
        else:
            cv2.circle(img, (x, y), h, colour, thickness=-1, lineType=line)
    return Image.fromarray(img)


DRAW = {
    "pil": draw_pil,
    "pil-ss": lambda objects, halves, colours: draw_pil(objects, halves, colours, scale=SUPERSAMPLE),
    "cv2": draw_cv2,
    "cv2-aa": lambda objects, halves, colours: draw_cv2(objects, halves, colours, antialias=True),
}


def _jpeg_round_trip(image: Image.Image, quality: int) -> Image.Image:
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=quality)
    buf.seek(0)
    return Image.open(buf).convert("RGB")
