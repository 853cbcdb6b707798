"""Static int8 exports (ONNX Runtime QDQ, OpenVINO + NNCF) of a tiny open_clip ViT, and the
choice of engine per CPU."""

import json

import numpy as np
import onnx
import pytest
import torch
from backend_fixtures import make_open_clip_checkpoint
from PIL import Image
from typer.testing import CliRunner

import polymodal
from polymodal.backends.calibration import calibration_images, calibration_texts
from polymodal.backends.cpu import choose_engine, has_vnni, int8_tier
from polymodal.backends.openvino import OpenVinoModel, load_export
from polymodal.cli import app
from polymodal.errors import ExportError

TEXTS = ["a red circle left of a blue square", "a photo of a cat", "two dogs on a beach", "a diagram"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    torch.set_num_threads(1)
    directory = tmp_path_factory.mktemp("tiny")
    source = f"open_clip:polymodal-test-tiny@{make_open_clip_checkpoint(directory)[2]}"
    return source, polymodal.load(source)


def _photos(n=12, seed=5):
    """Realistic images the calibration did not see (another seed of crops)."""
    images, _ = calibration_images(n, seed=seed)
    return images


def _min_cosine(a, b):
    return (a * b).sum(-1).min().item()


def test_static_onnx_int8_matches_pytorch(tiny, tmp_path):
    source, model = tiny
    out = tmp_path / "onnx"
    result = CliRunner().invoke(app, ["export", "onnx", source, str(out), "--int8", "--static", "--calib-count", "24"])
    assert result.exit_code == 0, result.output
    assert "ONNX Runtime int8: cosine" in result.output
    assert json.loads((out / "polymodal_onnx.json").read_text())["int8_mode"] == "static"
    ops = {node.op_type for node in onnx.load(str(out / "image.int8.onnx")).graph.node}
    assert "QuantizeLinear" in ops and "DynamicQuantizeLinear" not in ops  # activation ranges fixed: static
    exported = load_export(out, int8=True, engine="onnx")
    assert exported.model_id.startswith("onnx-int8:")
    images = _photos()
    assert _min_cosine(exported.encode_image(images), model.encode_image(images)) >= 0.99
    assert _min_cosine(exported.encode_text(TEXTS), model.encode_text(TEXTS)) >= 0.95
    with pytest.raises(ExportError, match="has no OpenVINO graphs"):
        load_export(out, engine="openvino")
    assert polymodal.load(out).model_id.startswith("onnx-int8:")  # the only engine it holds


def test_openvino_export_matches_pytorch_and_is_chosen(tiny, tmp_path):
    source, model = tiny
    calib = tmp_path / "calib"
    calib.mkdir()
    for i, img in enumerate(calibration_images(8, seed=1)[0]):
        img.save(calib / f"{i:02d}.png")
    (calib / "broken.jpg").write_bytes(b"not an image")
    out = tmp_path / "ov"
    result = CliRunner().invoke(app, ["export", "openvino", source, str(out), "--int8", "--calib", str(calib)])
    assert result.exit_code == 0, result.output
    assert "skipped 1 unreadable" in result.output and "OpenVINO int8: cosine" in result.output
    assert {p.name for p in out.glob("*.xml")} == {"image.xml", "text.xml", "image.int8.xml", "text.int8.xml"}
    images = _photos()
    ref_image, ref_text = model.encode_image(images), model.encode_text(TEXTS)
    fp32 = load_export(out, int8=False, engine="openvino")
    assert _min_cosine(fp32.encode_image(images), ref_image) >= 0.9999
    int8 = load_export(out, int8=True, engine="openvino")
    assert isinstance(int8, OpenVinoModel) and int8.model_id.startswith("openvino-int8:")
    assert _min_cosine(int8.encode_image(images), ref_image) >= 0.99
    assert _min_cosine(int8.encode_text(TEXTS), ref_text) >= 0.95
    assert int8.encode_image(torch.zeros(5, 3, 32, 32, dtype=torch.uint8)).shape == (5, model.embed_dim)
    loaded = polymodal.load(out)  # the fastest engine for this CPU, int8 since it was exported
    expected = choose_engine(["openvino", "onnx"])
    assert loaded.model_id.startswith(f"{expected}-int8:")
    assert load_export(out, int8=True, engine="onnx").model_id.startswith("onnx-int8:")  # for CPUs that pick it


def test_openvino_export_refuses_a_missing_calibration_folder(tiny, tmp_path):
    source, _ = tiny
    with pytest.raises(ExportError, match="calibration folder not found"):
        CliRunner().invoke(app, ["export", "openvino", source, str(tmp_path / "ov"), "--int8",
                                 "--calib", str(tmp_path / "nowhere")], catch_exceptions=False)
    assert not (tmp_path / "ov").exists()


def test_int8_tier_and_engine_choice():
    assert int8_tier({"avx2", "fma", "amx_int8", "avx512_vnni"}) == "amx"
    assert int8_tier({"avx2", "fma", "avx512f", "avx512_vnni"}) == "vnni"
    assert int8_tier({"avx2", "fma", "avx_vnni"}) == "vnni"  # Alder Lake and later: VNNI without AVX-512
    assert int8_tier({"avx2", "fma", "avx512f"}) == "avx2"  # AVX-512 without VNNI (Skylake-SP)
    assert int8_tier({"sse4_2"}) == "none"
    assert has_vnni({"avx2", "avx_vnni"}) and not has_vnni({"avx2", "avx512f"})
    assert choose_engine(["openvino", "onnx"], {"avx2", "avx512_vnni"}) == "openvino"
    assert choose_engine(["openvino", "onnx"], {"avx2"}) == "onnx"
    assert choose_engine(["openvino", "onnx"], {"sse4_2"}) == "onnx"
    assert choose_engine(["onnx"], {"avx2", "avx512_vnni"}) == "onnx"  # only what the export holds
    assert int8_tier() in ("amx", "vnni", "avx2", "none")  # this machine's /proc/cpuinfo


def test_calibration_inputs_are_varied():
    images, skipped = calibration_images(16)
    assert skipped == 0 and len(images) == 16 and all(isinstance(i, Image.Image) for i in images)
    pixels = np.stack([np.asarray(i.resize((32, 32))) for i in images]).reshape(16, -1).astype(float)
    assert np.linalg.matrix_rank(pixels) == 16  # no two alike
    texts = calibration_texts(20)
    assert len(set(texts)) == 20 and all(texts)
