"""Calibration inputs for static int8 quantisation: the activation ranges of each layer are
measured on these, so they should look like what the model will see.

Images come from a folder the user names (any image files, searched recursively) or, by default,
from what is on every machine without a network: scikit-image's sample photographs (random crops
and flips) and rendered ShapesWorld scenes. Captions: ShapesWorld captions and a few generic ones.
"""

from __future__ import annotations

import random
from dataclasses import asdict
from pathlib import Path

import numpy as np
from PIL import Image

from ..data.schema import IMAGE_EXTENSIONS, DataError
from ..data.synthetic.shapes import COLOURS, SHAPES, describe, render, sample_scene, scene_facts
from ..errors import ExportError
from ..modalities.image_files import load_image

SAMPLE_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "retina",
                 "immunohistochemistry", "colorwheel", "logo", "camera", "coins", "page")
GENERIC_CAPTIONS = ("a photo of a cat", "an astronaut in a white suit", "a cup of coffee on a table",
                    "a rocket on the launch pad", "a diagram with text", "a microscope image of cells",
                    "a close-up photo of a dog", "a street at night with cars", "two people playing football")


def calibration_images(count: int = 64, folder: Path | None = None, seed: int = 0) -> tuple[list[Image.Image], int]:
    """`count` RGB images and how many unreadable files were skipped (from `folder` only)."""
    if folder is not None:
        return _folder_images(Path(folder), count)
    rng = random.Random(seed)
    photos = _sample_photos()
    images = [_random_crop(rng.choice(photos), rng) for _ in range(count - count // 4)]
    images += [_shapes_scene(rng) for _ in range(count // 4)]
    return images, 0


def calibration_texts(count: int = 64, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    texts = list(GENERIC_CAPTIONS)
    while len(texts) < count:
        objs = sample_scene(rng, [(c, s) for c in COLOURS for s in SHAPES], None, 224)
        texts.append(describe([asdict(o) for o in objs], scene_facts(objs), rng))
    return texts[:count]


def _folder_images(folder: Path, count: int) -> tuple[list[Image.Image], int]:
    if not folder.is_dir():
        raise ExportError(f"{folder}: calibration folder not found")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    images, skipped = [], 0
    for file in files:
        if len(images) == count:
            break
        try:
            images.append(load_image(file))
        except DataError:
            skipped += 1
    if not images:
        raise ExportError(f"{folder}: no readable images to calibrate with ({skipped} unreadable)")
    return images, skipped


def _sample_photos() -> list[Image.Image]:
    import skimage.data

    photos = []
    for name in SAMPLE_PHOTOS:
        pixels = getattr(skimage.data, name)()  # bundled with scikit-image: no download
        if pixels.ndim == 2:
            pixels = np.stack([pixels] * 3, axis=-1)
        photos.append(Image.fromarray(np.ascontiguousarray(pixels[..., :3]).astype(np.uint8)))
    return photos


def _random_crop(img: Image.Image, rng: random.Random) -> Image.Image:
    width, height = img.size
    scale = rng.uniform(0.4, 1.0)
    w, h = max(1, int(width * scale)), max(1, int(height * scale))
    x, y = rng.randint(0, width - w), rng.randint(0, height - h)
    crop = img.crop((x, y, x + w, y + h))
    return crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else crop


def _shapes_scene(rng: random.Random) -> Image.Image:
    return render(sample_scene(rng, [(c, s) for c in COLOURS for s in SHAPES], None, 224), 224)
