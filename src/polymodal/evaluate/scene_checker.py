"""An exact scene checker for ShapesWorld-style images, with no learned model: it finds each
object by its colour and names its shape and size by classical image analysis (scikit-image),
so generated pictures can be scored against their prompts (issue 13's GenEval-style checker).

How: every pixel goes to the nearest of ShapesWorld's palette colours or to the background; each
colour's connected regions larger than a speck are objects. A region's shape is the nearest, in
a small space of scale-free measures (solidity, extent, circularity, eccentricity, the corner
count of its convex hull as a fraction), among the same measures of reference shapes drawn by
the ShapesWorld renderer at both sizes and several sub-pixel offsets; its size is the reference
size whose area is nearer. Rendering references rather than hand-setting thresholds keeps the
checker in step with the renderer.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageFilter
from scipy import ndimage
from skimage import measure

from ..data.synthetic.shapes import COLOURS, SHAPES, SIZES, Obj, render

BACKGROUND = (20, 20, 24)
MIN_AREA_FRACTION = 0.2  # a region smaller than this fraction of a small object's area is a speck
# References are also drawn blurred and noisy, as generated images are, so that a ragged edge
# still lands nearest its own shape: (blur radius, noise std) per variant.
REFERENCE_DEGRADATIONS = ((0.0, 0.0), (0.7, 12.0), (0.7, 12.0), (1.0, 20.0))


@dataclass(frozen=True)
class Detection:
    colour: str
    shape: str
    size: str
    x: float
    y: float
    area: int


def _features(mask: np.ndarray) -> np.ndarray:
    """Measures of one region (a boolean mask holding one connected region): four scale-free
    ones for its shape, and its log-area per image pixel for its size."""
    props = measure.regionprops(mask.astype(np.uint8))[0]
    perimeter = max(props.perimeter, 1.0)
    circularity = 4 * np.pi * props.area / perimeter ** 2
    log_area = np.log(props.area / mask.size)
    return np.array([props.solidity, props.extent, min(circularity, 1.2), props.eccentricity, log_area])


@lru_cache(maxsize=4)
def _references(image_size: int) -> tuple[np.ndarray, list[tuple[str, str]], float]:
    """Features of every shape drawn by the renderer (both sizes, several offsets, clean and
    degraded), their (shape, size), and the smallest object's area in pixels."""
    feats, names, areas = [], [], []
    centre, rng = image_size / 2, np.random.default_rng(0)
    for shape in SHAPES:
        for size in SIZES:
            for dx in (0.0, 0.25, 0.5, 0.75):
                for dy in (0.0, 0.5):
                    drawn = render([Obj("white", shape, size, centre + dx, centre + dy)], image_size)
                    for blur, noise in REFERENCE_DEGRADATIONS:
                        mask = _object_mask(_colour_labels(_degrade(drawn, blur, noise, rng)) >= 0)
                        feats.append(_features(mask))
                        names.append((shape, size))
                        areas.append(mask.sum())
    return np.stack(feats), names, float(min(areas))


def _degrade(image: Image.Image, blur: float, noise: float, rng: np.random.Generator) -> np.ndarray:
    pixels = np.asarray(image.filter(ImageFilter.GaussianBlur(blur)) if blur else image).astype(np.float32)
    return np.clip(pixels + rng.normal(0, noise, pixels.shape), 0, 255).astype(np.uint8) if noise else pixels


def _object_mask(mask: np.ndarray) -> np.ndarray:
    """The largest connected region of a mask, its holes (noise inside the object) filled."""
    regions = measure.label(mask, connectivity=2)
    if regions.max() == 0:
        return mask
    largest = np.bincount(regions.ravel())[1:].argmax() + 1
    return ndimage.binary_fill_holes(regions == largest)


def _colour_labels(pixels: np.ndarray) -> np.ndarray:
    """(H, W) index into the palette's colours for each pixel, -1 where the background is nearer."""
    palette = np.array([BACKGROUND, *COLOURS.values()], dtype=np.float32)  # (1 + C, 3)
    dist = ((pixels[..., None, :].astype(np.float32) - palette) ** 2).sum(-1)  # (H, W, 1 + C)
    return dist.argmin(-1) - 1


def detect(image: Image.Image | np.ndarray) -> list[Detection]:
    """The objects in an image: colour, shape, size and centre (pixels), largest first."""
    pixels = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image)
    refs, names, smallest = _references(pixels.shape[0])
    labels = _colour_labels(pixels)
    found = []
    for c, colour in enumerate(COLOURS):
        regions = measure.label(labels == c, connectivity=2)
        for props in measure.regionprops(regions):
            if props.area < MIN_AREA_FRACTION * smallest:
                continue
            mask = ndimage.binary_fill_holes(regions == props.label)
            shape, size = names[int(((refs - _features(mask)) ** 2).sum(1).argmin())]
            y, x = props.centroid
            found.append(Detection(colour, shape, size, float(x), float(y), int(props.area)))
    return sorted(found, key=lambda d: -d.area)


def agrees(detections: list[Detection], objects: list[dict], tolerance: float = 3.0) -> bool:
    """Whether the detections are exactly the scene's objects: the same colour, shape and size,
    each centre within `tolerance` pixels of the true one."""
    if len(detections) != len(objects):
        return False
    remaining = list(detections)
    for o in objects:
        match = next((d for d in remaining if (d.colour, d.shape, d.size) == (o["colour"], o["shape"], o["size"])
                      and abs(d.x - o["x"]) <= tolerance and abs(d.y - o["y"]) <= tolerance), None)
        if match is None:
            return False
        remaining.remove(match)
    return True
