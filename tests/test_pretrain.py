"""Self-supervised pretraining (SimCLR, MAE, masked language modelling) trains for real on a tiny
ShapesWorld, and `train --init-from` starts alignment from the pretrained towers."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from polymodal.config import ModelConfig
from polymodal.errors import CheckpointError
from polymodal.models.factory import create_model
from polymodal.train.init_from import init_towers
from polymodal.train.loop import TrainConfig, train
from polymodal.train.pretrain import PretrainConfig, pretrain
from polymodal.utils import seed_everything

pytestmark = pytest.mark.slow  # every test here trains

# A ViT on 32 px images (16 patches of 8 px) and a one-layer text transformer: seconds per run.
TINY = {"embed_dim": 32,
        "image": {"kind": "vit", "image_size": 32, "width": 32, "layers": 1, "heads": 2, "patch_size": 8},
        "text": {"kind": "transformer", "width": 32, "layers": 1, "heads": 2, "context_length": 48}}


@pytest.fixture(scope="module")
def tiny_preset(tmp_path_factory):
    path = tmp_path_factory.mktemp("preset") / "tiny-vit.json"
    path.write_text(json.dumps(TINY))
    return str(path)


def _pretrain(shapes_dir, preset, out, objective, steps, **options):
    torch.set_num_threads(1)
    pretrain(PretrainConfig(data=str(shapes_dir), out=str(out), objective=objective, model=preset, steps=steps,
                            batch_size=64, progress=False, **options))
    return json.loads((out / "config.json").read_text())


@pytest.fixture(scope="module")
def simclr_run(shapes_dir, tiny_preset, tmp_path_factory):
    out = tmp_path_factory.mktemp("simclr")
    return out, _pretrain(shapes_dir, tiny_preset, out, "simclr", 60)


@pytest.fixture(scope="module")
def mlm_run(shapes_dir, tiny_preset, tmp_path_factory):
    out = tmp_path_factory.mktemp("mlm")
    return out, _pretrain(shapes_dir, tiny_preset, out, "mlm", 150, lr=5e-3)


def test_simclr_brings_two_views_of_one_image_together(simclr_run):
    _, meta = simclr_run
    p = meta["pretraining"]
    figures = p["figures"]
    assert p["objective"] == "simclr" and p["towers"] == ["image"] and p["step"] == 60
    assert figures["last_loss"] < 0.8 * figures["first_loss"], figures
    after = figures["after"]
    # Held-out images (100): two views of one image end up closer than views of two different
    # images (at the start, all are alike), and a view finds its partner more often than at the start.
    gap = {k: v["positive_cosine"] - v["negative_cosine"] for k, v in figures.items() if k in ("before", "after")}
    assert gap["after"] > gap["before"] + 0.2, figures
    assert after["view_top1"] > figures["before"]["view_top1"], figures


@pytest.fixture(scope="module")
def two_tone_dir(tmp_path_factory):
    """Images whose left half is a random colour and right half its complement: a masked patch is
    predictable from any visible one, so MAE can do far better than the mean patch."""
    root = tmp_path_factory.mktemp("two_tone")
    (root / "images").mkdir()
    rng = np.random.default_rng(0)
    lines = []
    for i in range(320):
        pixels = np.empty((32, 32, 3), dtype=np.uint8)
        pixels[:, :16] = rng.integers(0, 256, 3)
        pixels[:, 16:] = 255 - pixels[:, :16]
        Image.fromarray(pixels).save(root / "images" / f"{i}.png")
        lines.append(json.dumps({"id": str(i), "split": "train" if i < 256 else "val", "image": f"images/{i}.png",
                                 "text": ["two tones"]}))
    (root / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    return root


def test_mae_reconstructs_masked_patches_far_better_than_the_mean(two_tone_dir, tiny_preset, tmp_path):
    figures = _pretrain(two_tone_dir, tiny_preset, tmp_path, "mae", 150, norm_pix=False)["pretraining"]["figures"]
    assert figures["last_loss"] < 0.3 * figures["first_loss"], figures
    after = figures["after"]
    assert after["masked_mse"] < 0.3 * after["mean_baseline_mse"], after


def test_mlm_predicts_masked_tokens_above_the_most_frequent_rate(mlm_run):
    _, meta = mlm_run
    figures = meta["pretraining"]["figures"]
    assert meta["pretraining"]["towers"] == ["text"]
    assert figures["last_loss"] < 0.6 * figures["first_loss"], figures
    after = figures["after"]
    assert after["masked_accuracy"] > after["majority_rate"] + 0.1, after
    assert after["masked_accuracy"] > figures["before"]["masked_accuracy"] + 0.2, figures


def test_mae_and_mlm_refuse_towers_they_cannot_train(shapes_dir, tmp_path):
    with pytest.raises(ValueError, match="needs a ViT image tower"):
        _pretrain(shapes_dir, "shapes-cnn-tiny", tmp_path, "mae", 1)
    with pytest.raises(ValueError, match="not 'bow'"):
        _pretrain(shapes_dir, "shapes-cnn-bow", tmp_path, "mlm", 1)


def _towers(directory, prefix):
    return {k: v for k, v in load_file(str(directory / "model.safetensors")).items() if k.startswith(prefix)}


def test_init_from_loads_each_pretrained_tower(shapes_dir, tiny_preset, simclr_run, mlm_run, tmp_path):
    (simclr_dir, _), (mlm_dir, _) = simclr_run, mlm_run
    # A step of almost no size, so the aligned checkpoint still holds the towers it started from.
    train(TrainConfig(data=str(shapes_dir), out=str(tmp_path / "aligned"), model=tiny_preset, steps=1, lr=1e-12,
                      weight_decay=0.0, batch_size=64, eval_images=0, progress=False,
                      init_from=[str(simclr_dir), str(mlm_dir)]))
    aligned = tmp_path / "aligned"
    seed_everything(0)  # the image tower pretraining started from (built before the text tower, after the seed)
    fresh = create_model(tiny_preset, texts=["a red circle"]).state_dict()
    for donor, prefix in ((simclr_dir, "image_tower."), (mlm_dir, "text_tower.")):
        got, want = _towers(aligned, prefix), _towers(donor, prefix)
        assert got.keys() == want.keys() and got
        for k in want:
            assert torch.allclose(got[k], want[k], atol=1e-6), k
        if prefix == "image_tower.":  # pretraining moved the weights away from a fresh model's
            assert sum(not torch.allclose(want[k], fresh[k], atol=1e-3) for k in want) > len(want) // 2
    meta = json.loads((aligned / "config.json").read_text())
    assert meta["training"]["init_from"] == [str(simclr_dir), str(mlm_dir)]


def test_init_from_refuses_a_different_architecture_or_two_of_one_tower(shapes_dir, simclr_run):
    simclr_dir, _ = simclr_run
    model = create_model("shapes-vit-tiny", texts=["a red circle"])
    with pytest.raises(CheckpointError, match="differs from the model being trained"):
        init_towers(model, [simclr_dir])
    with pytest.raises(CheckpointError, match="would replace"):
        init_towers(create_model(ModelConfig.from_dict(TINY), texts=["a red circle"]), [simclr_dir, simclr_dir])


def test_pretrain_cli_fails_in_one_line_on_a_cnn_with_mae(shapes_dir, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "polymodal.cli", "pretrain", str(shapes_dir), "--objective", "mae",
                           "--model", "shapes-cnn-tiny", "--out", str(tmp_path / "x"), "--steps", "1"],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "COLUMNS": "300"})
    assert proc.returncode == 2
    assert "needs a ViT image tower" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "x" / "model.safetensors").exists()
