"""Exact preprocessing parity at odd sizes: polymodal's pixels and embeddings equal those of
transformers' image processors (slow: Pillow; fast: torchvision) and open_clip's transforms for
images that must be upscaled, downscaled, squashed and cropped, within 1e-5."""

import dataclasses

import numpy as np
import pytest
import torch
from backend_fixtures import make_hf_model, make_open_clip_checkpoint
from PIL import Image

import polymodal
from polymodal.backends.hf import _reference_resampler

transformers = pytest.importorskip("transformers")  # the pretrained extra

# (width, height): upscaled, downscaled, extreme strips, one pixel, one pixel off the crop, a
# 3-pixel side (ambiguous channels for transformers' inference), and one size twice (the fast
# processors resize same-shaped images as one batch).
SIZES = [(48, 40), (37, 91), (200, 13), (1, 1), (225, 224), (3, 50), (33, 32), (48, 40)]
TOLERANCE = 1e-5


def _images() -> list[Image.Image]:
    rng = np.random.RandomState(1)
    images = [Image.fromarray(rng.randint(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in SIZES]
    return images + [Image.fromarray(rng.randint(0, 256, (29, 61), dtype=np.uint8))]  # greyscale ("L")


def _processor_class(kind: str, resampler: str):
    """The slow (Pillow) or fast (torchvision) processor class, by its name in this transformers."""
    prefix = "CLIP" if kind == "clip" else "Siglip"
    names = [f"{prefix}ImageProcessorFast"] if resampler == "torch" else [f"{prefix}ImageProcessorPil",
                                                                            f"{prefix}ImageProcessor"]
    for name in names:  # transformers 5.x later renamed the slow class "...Pil" and the fast one plainly
        if hasattr(transformers, name):
            return getattr(transformers, name)
    raise AssertionError(f"no {resampler} image processor for {kind} in transformers {transformers.__version__}")


def _unit(x: torch.Tensor) -> torch.Tensor:
    x = getattr(x, "pooler_output", x)  # transformers 5 returns an output object
    return x / x.norm(dim=-1, keepdim=True)


def _assert_parity(model, ref_pixels: torch.Tensor, ref_embed, images) -> None:
    pixels = model.normalize(model.preprocess(images))  # the model's own float input
    assert pixels.shape == ref_pixels.shape
    assert (pixels - ref_pixels).abs().max() <= TOLERANCE
    with torch.no_grad():
        ref = _unit(ref_embed(ref_pixels))
    assert (model.encode_image(images) - ref).abs().max() <= TOLERANCE


@pytest.mark.parametrize("resampler", ["pil", "torch"])
@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_hf_pixels_and_embeddings_match_each_processor(tmp_path, kind, resampler):
    ref = make_hf_model(tmp_path, kind)
    model = polymodal.load(tmp_path)
    # The checkpoint's processor settings, with the resize of the processor under test.
    model.config.image = dataclasses.replace(model.config.image, resampler=resampler)
    processor = _processor_class(kind, resampler).from_pretrained(tmp_path)
    images = _images()
    # Without input_data_format, transformers' slow processors read a 3-pixel-high image as channels-first.
    ref_pixels = processor(images=images, return_tensors="pt", input_data_format="channels_last")["pixel_values"]
    _assert_parity(model, ref_pixels, lambda px: ref.get_image_features(pixel_values=px), images)


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_hf_default_follows_transformers_auto_processor(tmp_path, kind):
    """`polymodal.load` resizes as transformers' `AutoImageProcessor` does for the checkpoint (the
    fast one where transformers 5 and torchvision are installed), and keeps it through a save."""
    ref = make_hf_model(tmp_path / "m", kind)
    model = polymodal.load(tmp_path / "m")
    processor = transformers.AutoImageProcessor.from_pretrained(tmp_path / "m")
    assert model.config.image.resampler == _reference_resampler(str(tmp_path / "m"))
    if int(transformers.__version__.split(".")[0]) >= 5:
        assert model.config.image.resampler == "torch"
    images = _images()
    ref_pixels = processor(images=images, return_tensors="pt", input_data_format="channels_last")["pixel_values"]
    _assert_parity(model, ref_pixels, lambda px: ref.get_image_features(pixel_values=px), images)
    model.save(tmp_path / "saved", {})
    assert polymodal.load(tmp_path / "saved").config.image == model.config.image


def test_open_clip_pixels_and_embeddings_match_its_transforms(tmp_path):
    ref, preprocess, file = make_open_clip_checkpoint(tmp_path)
    model = polymodal.load(f"open_clip:polymodal-test-tiny@{file}")
    images = _images()
    ref_pixels = torch.stack([preprocess(im) for im in images])
    _assert_parity(model, ref_pixels, lambda px: ref.encode_image(px), images)


@pytest.mark.slow  # exports
@pytest.mark.parametrize("kind", ["hf", "open_clip"])
def test_onnx_export_keeps_the_exact_resize(tmp_path, kind):
    """The export carries the resize conventions, so the ONNX model's pixels are the reference's too."""
    if kind == "hf":
        make_hf_model(tmp_path / "m")
        model = polymodal.load(tmp_path / "m")
    else:
        model = polymodal.load(f"open_clip:polymodal-test-tiny@{make_open_clip_checkpoint(tmp_path)[2]}")
    polymodal.backends.onnx.export_onnx(model, tmp_path / "onnx")
    exported = polymodal.load(tmp_path / "onnx")
    assert exported.config.image == model.config.image
    assert torch.equal(exported.preprocess(_images()), model.preprocess(_images()))
