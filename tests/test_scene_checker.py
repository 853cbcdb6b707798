"""The exact scene checker (issue 13): on rendered ShapesWorld scenes it finds exactly the
generator's objects (colour, shape, size, position), and a scene that differs disagrees."""

from __future__ import annotations

import random

import numpy as np

from polymodal.data.synthetic.shapes import COLOURS, SHAPES, render, sample_scene
from polymodal.evaluate.scene_checker import agrees, detect


def scenes(n: int, seed: int):
    rng = random.Random(seed)
    combos = [(c, s) for c in COLOURS for s in SHAPES]
    for _ in range(n):
        objs = sample_scene(rng, combos, None, 64)
        yield render(objs, 64), [vars(o) for o in objs]


def test_the_checker_agrees_with_the_generator_on_rendered_scenes():
    results = [agrees(detect(image), objects) for image, objects in scenes(150, seed=3)]
    assert sum(results) / len(results) >= 0.99


def test_a_scene_that_differs_in_any_attribute_disagrees():
    image, objects = next(scenes(1, seed=4))
    found = detect(image)
    assert agrees(found, objects)
    o = objects[0]
    for attribute, other in (("colour", next(c for c in COLOURS if c != o["colour"])),
                             ("shape", next(s for s in SHAPES if s != o["shape"])),
                             ("size", "large" if o["size"] == "small" else "small"), ("x", o["x"] + 10)):
        assert not agrees(found, [{**o, attribute: other}, *objects[1:]]), attribute
    assert not agrees(found, objects[1:]) and not agrees([], objects)


def test_the_checker_reads_blurred_and_noisy_scenes():
    """Blur (radius 0.7) and noise (std 12), about what a small diffusion model's samples show."""
    from PIL import ImageFilter

    noise = np.random.default_rng(0)
    results = []
    for image, objects in scenes(60, seed=5):
        blurred = np.asarray(image.filter(ImageFilter.GaussianBlur(0.7))).astype(np.float32)
        degraded = np.clip(blurred + noise.normal(0, 12, blurred.shape), 0, 255).astype(np.uint8)
        results.append(agrees(detect(degraded), objects))
    assert sum(results) / len(results) >= 0.95
