"""CoCa joint training: one image tower under both losses, both losses falling, the aligned half
saved as an ordinary aligned checkpoint, the captioner still captioning, and the CLI flag."""

import os
import subprocess
import sys

import pytest
import torch

import polymodal
from polymodal.data import load_records
from polymodal.data.pairs import ImageTextPairs
from polymodal.models.aligned import AlignedModel
from polymodal.models.generative.captioner import Captioner
from polymodal.models.generative.coca import create_coca, load_coca, save_coca
from polymodal.train.captioner import CaptionTrainConfig, _joint_step, train_captioner
from polymodal.train.optim import build_optimizer


@pytest.fixture(scope="module")
def batch(shapes_dir):
    pairs = ImageTextPairs(load_records(shapes_dir).split("train"), 64, progress=False)
    return pairs, next(pairs.batches(16, seed=0, epoch=0, hard_negatives=2))


def joint_model(pairs) -> torch.nn.Module:
    torch.manual_seed(0)
    return create_coca("shapes-cnn-tiny", "shapes-captioner-tiny", [c for r in pairs.records for c in r.text])


def test_the_tower_is_one_module_and_both_heads_read_it(batch):
    pairs, b = batch
    model = joint_model(pairs)
    assert model.captioner.image_tower is model.aligned.image_tower
    out = model(b.images, model.aligned.tokenizer(b.captions), model.captioner.tokenizer(b.captions),
                model.aligned.tokenizer(b.negatives))
    assert out["image_features"].shape == (16, model.aligned.config.embed_dim)
    assert out["negative_features"].shape == (32, model.aligned.config.embed_dim)
    assert out["logits"].shape[:2] == out["targets"].shape
    model.eval()
    with torch.no_grad():  # the joint forward's image features are the aligned model's own
        again = model(b.images, model.aligned.tokenizer(b.captions))
        torch.testing.assert_close(again["image_features"], model.aligned.image_features(b.images))
    assert "logits" not in again


def test_joint_steps_lower_both_losses(batch):
    pairs, b = batch
    torch.set_num_threads(1)
    model = joint_model(pairs)
    optimizer = build_optimizer(model, 2e-3, 0.0)
    step = _joint_step(model, optimizer, CaptionTrainConfig("", "", caption_weight=1.0, contrastive=True), "cpu")
    model.train()
    losses = [step(b) for _ in range(25)]  # the same batch: both terms must fall
    first, last = losses[0], losses[-1]
    assert last["contrastive_loss"] < 0.7 * first["contrastive_loss"]
    assert last["caption_loss"] < 0.7 * first["caption_loss"]
    assert first["loss"] == pytest.approx(first["contrastive_loss"] + first["caption_loss"], rel=1e-5)


def test_caption_weight_zero_trains_the_aligned_half_alone(batch):
    pairs, b = batch
    model = joint_model(pairs)
    decoder = {k: v.clone() for k, v in model.captioner.decoder.state_dict().items()}
    tower = {k: v.clone() for k, v in model.aligned.image_tower.state_dict().items()}
    optimizer = build_optimizer(model, 2e-3, 0.05)
    losses = _joint_step(model.train(), optimizer, CaptionTrainConfig("", "", caption_weight=0.0), "cpu")(b)
    assert "caption_loss" not in losses
    assert all(torch.equal(v, model.captioner.decoder.state_dict()[k]) for k, v in decoder.items())
    assert not all(torch.equal(v, model.aligned.image_tower.state_dict()[k]) for k, v in tower.items())


def test_the_saved_halves_load_as_an_aligned_model_and_a_captioner(batch, tmp_path):
    pairs, b = batch
    model = joint_model(pairs)
    optimizer = build_optimizer(model, 2e-3, 0.05)
    _joint_step(model.train(), optimizer, CaptionTrainConfig("", ""), "cpu")(b)  # moves the BatchNorm statistics too
    model.eval()
    save_coca(model, tmp_path / "coca")
    aligned = polymodal.load(tmp_path / "coca" / "aligned")
    assert isinstance(aligned, AlignedModel)
    torch.testing.assert_close(aligned.encode_image(b.images), model.aligned.encode_image(b.images))
    torch.testing.assert_close(aligned.encode_text(b.captions), model.aligned.encode_text(b.captions))
    captioner = polymodal.load(tmp_path / "coca")
    assert isinstance(captioner, Captioner)
    assert captioner.caption(b.images[:4]) == model.captioner.caption(b.images[:4])
    tied = load_coca(tmp_path / "coca")
    assert tied.captioner.image_tower is tied.aligned.image_tower
    torch.testing.assert_close(tied.aligned.encode_image(b.images), aligned.encode_image(b.images))


@pytest.mark.slow
def test_joint_training_keeps_captioning_and_the_aligned_half_retrieves(shapes_dir, tmp_path):
    torch.set_num_threads(1)
    result = train_captioner(CaptionTrainConfig(str(shapes_dir), str(tmp_path / "coca"), model="shapes-captioner-tiny",
                                                aligned_model="shapes-cnn-tiny", contrastive=True, steps=150,
                                                batch_size=32, lr=5e-3, progress=False))
    assert result["steps"] == 150 and {"contrastive_loss", "caption_loss"} <= set(result)
    test = load_records(shapes_dir).split("test")
    pairs = ImageTextPairs(test, 64, progress=False)
    captions = polymodal.load(tmp_path / "coca").caption(pairs.images[:8])
    # greedy captions of a trained decoder use the caption vocabulary (an untrained one emits word pieces)
    assert all(len(c.split()) >= 4 for c in captions)
    assert sum(w in {"circle", "square", "triangle", "star", "cross", "ellipse", "pentagon", "rectangle",
                     "semicircle"} for c in captions for w in c.split()) >= 8
    aligned = polymodal.load(tmp_path / "coca" / "aligned")
    sims = aligned.encode_image(pairs.images[:50]) @ aligned.encode_text([r.text[0] for r in pairs.records[:50]]).T
    # text-to-image R@5 among 50 images, far above the 0.1 of chance
    assert (sims.T.topk(5, dim=1).indices == torch.arange(50)[:, None]).any(1).float().mean() > 0.3


def cli(*args):
    return subprocess.run([sys.executable, "-m", "polymodal.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "COLUMNS": "250"})


@pytest.mark.slow
def test_the_command_line_trains_jointly_and_the_aligned_half_indexes_exports_and_evaluates(shapes_dir, tmp_path):
    out = tmp_path / "coca"
    train = cli("caption", "train", shapes_dir, "--out", out, "--steps", "3", "--batch-size", "16", "--model",
                "shapes-captioner-tiny", "--contrastive", "--aligned-model", "shapes-cnn-tiny",
                "--caption-weight", "0.5")
    assert train.returncode == 0, train.stderr
    assert "contrastive loss" in train.stdout and "caption loss" in train.stdout
    image = sorted((shapes_dir / "images" / "test").glob("*.png"))[0]
    run = cli("caption", "run", image, "--model", out, "--json")
    assert run.returncode == 0 and '"caption"' in run.stdout, run.stderr
    evaluated = cli("eval", out / "aligned", shapes_dir, "--max-images", "20", "--split", "test")
    assert evaluated.returncode == 0 and "t2i R@1" in evaluated.stdout, evaluated.stderr
    index = cli("index", "build", shapes_dir, "--model", out / "aligned", "--out", tmp_path / "index")
    assert index.returncode == 0, index.stderr
    exported = cli("export", "onnx", out / "aligned", tmp_path / "onnx")
    assert exported.returncode == 0 and "cosine vs PyTorch" in exported.stdout, exported.stderr
    alone = cli("caption", "train", shapes_dir, "--out", tmp_path / "x", "--steps", "1", "--caption-weight", "2")
    assert alone.returncode != 0 and "needs --contrastive" in alone.stderr
