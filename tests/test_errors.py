"""Errors named for what they are, and behaviour that used to pass silently: pretrained-source
detection, tower locks, registry overwrites, config typos, encode_* and the caller's train mode."""

import json

import pytest
import torch

import polymodal
from polymodal.backends import is_pretrained_source, load_trainable
from polymodal.config import get_model_config
from polymodal.errors import CheckpointError, ConfigError, DataError, IndexFormatError, PolymodalError
from polymodal.index import Index
from polymodal.models.checkpoint import save_checkpoint
from polymodal.models.factory import lock_pretrained_towers
from polymodal.registry import Registry
from polymodal.train.loop import TrainConfig, train

CAPTIONS = ["a small red circle", "a big blue square", "a green star above a red disc"]


@pytest.fixture
def checkpoint(tmp_path):
    return save_checkpoint(polymodal.create_model("shapes-cnn-tiny", texts=CAPTIONS), tmp_path / "ckpt")


def test_each_error_names_its_kind_and_is_still_a_value_error(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        polymodal.load(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(IndexFormatError, match="not a polymodal index"):
        Index.open(tmp_path / "empty")
    with pytest.raises(DataError, match="no such file"):
        polymodal.load_dataset(tmp_path / "no-data")
    for cls in (CheckpointError, IndexFormatError, DataError, ConfigError):
        assert issubclass(cls, PolymodalError) and issubclass(cls, ValueError)
    assert not issubclass(CheckpointError, DataError)


def test_only_real_pretrained_models_count_as_pretrained(tmp_path, checkpoint):
    assert is_pretrained_source("hf:openai/clip-vit-base-patch32")
    assert is_pretrained_source("open_clip:ViT-B-32/openai")
    assert not is_pretrained_source(checkpoint)  # polymodal's own: trained at its own learning rate
    assert not is_pretrained_source(tmp_path)  # any directory is not enough
    assert not is_pretrained_source("shapes-cnn-tiny")
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text(json.dumps({"model_type": "clip"}))
    assert is_pretrained_source(tmp_path / "hf")
    (tmp_path / "oc").mkdir()
    (tmp_path / "oc" / "open_clip_config.json").write_text("{}")
    assert is_pretrained_source(tmp_path / "oc")
    (tmp_path / "lora").mkdir()
    (tmp_path / "lora" / "polymodal_backend.json").write_text(json.dumps({"lora": 8, "base": "hf:x"}))
    assert is_pretrained_source(tmp_path / "lora")


@pytest.mark.slow
def test_fine_tuning_a_checkpoint_uses_the_scratch_lr_and_honours_lock_image(tmp_path, shapes_dir, checkpoint):
    before = polymodal.load(checkpoint)
    cfg = TrainConfig(data=str(shapes_dir), out=str(tmp_path / "ft"), model=str(checkpoint), steps=4, batch_size=100,
                      eval_images=0, progress=False, log_every=1, lock_image=True, hard_negatives=0)
    train(cfg)
    lrs = [float(r.split(",")[2]) for r in (tmp_path / "ft" / "metrics.csv").read_text().splitlines()
           if ",train/lr," in r]
    assert max(lrs) > 1e-4  # 2e-3 with warm-up and cosine, not the 1e-5 of pretrained towers
    after = polymodal.load(tmp_path / "ft")
    for name in ("image_tower", "image_proj", "text_tower"):
        same = all(torch.equal(a, b) for a, b in zip(getattr(before, name).state_dict().values(),
                                                     getattr(after, name).state_dict().values()))
        assert same == name.startswith("image"), name  # the image side locked, the text side trained
    # BatchNorm running statistics are buffers: they stay as loaded too.
    assert any(k.endswith("running_mean") for k in before.image_tower.state_dict())


def test_one_lock_for_every_trainable_model(checkpoint):
    model = load_trainable(str(checkpoint), lock_text=True)
    trainable = {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"image_tower", "image_proj", "logit_scale"}


def test_a_preset_refuses_to_lock_a_tower_it_trains_from_scratch():
    with pytest.raises(ConfigError, match="--lock-image: the image tower of shapes-cnn-tiny is trained from scratch"):
        polymodal.create_model("shapes-cnn-tiny", texts=CAPTIONS, lock_image=True)
    with pytest.raises(ConfigError, match="--lock-text"):
        polymodal.create_model("shapes-cnn-tiny", texts=CAPTIONS, lock_text=True)
    # The bundled MiniLM text tower is pretrained: locking it is LiT, as the preset does itself.
    minilm = get_model_config("shapes-cnn-minilm")
    unlocked = lock_pretrained_towers(minilm, False, False)
    unlocked.text.locked = False
    assert lock_pretrained_towers(unlocked, False, True).text.locked
    assert not unlocked.text.locked  # a copy: the caller's config stays as it was


def test_registry_overwrite_must_be_asked_for():
    reg: Registry[int] = Registry("widget")
    reg.register("a", 1)
    with pytest.raises(ValueError, match="widget 'a' is already registered; pass overwrite=True"):
        reg.register("a", 2)
    with pytest.raises(ValueError, match="already registered"):
        reg.register("a")(3)
    assert reg.get("a") == 1
    reg.register("a", 4, overwrite=True)
    assert reg.get("a") == 4


def test_a_config_typo_fails_naming_the_closest_keys(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown ModelConfig key 'embed_dm' \(did you mean embed_dim\?\)"):
        polymodal.create_model("shapes-cnn-tiny", texts=CAPTIONS, embed_dm=64)
    preset = get_model_config("shapes-cnn-tiny").to_dict()
    preset["text"]["widht"] = 32
    (tmp_path / "typo.json").write_text(json.dumps(preset))
    with pytest.raises(ConfigError, match="unknown TextTowerConfig key 'widht' .*width"):
        get_model_config(tmp_path / "typo.json")


def test_a_vqa_config_typo_fails_too():
    from polymodal.data.vqa import QuestionVocab
    from polymodal.models.fusion import create_vqa_model

    vocab = QuestionVocab.build(["what is the shape of the red object?"])
    with pytest.raises(ConfigError, match="'hiden' .*hidden"):
        create_vqa_model("late", vocab, ["yes", "no"], hiden=64)


def test_encoding_keeps_the_callers_train_mode():
    model = polymodal.create_model("shapes-cnn-tiny", texts=CAPTIONS)
    model.train()
    model.text_tower.eval()  # a caller's own mix of modes comes back as it was
    modes = {name: m.training for name, m in model.named_modules()}
    model.encode_text(CAPTIONS)
    model.encode_image(torch.zeros(2, 3, 64, 64, dtype=torch.uint8))
    assert {name: m.training for name, m in model.named_modules()} == modes
    model.eval()
    model.encode_text(CAPTIONS)
    assert not any(m.training for m in model.modules())


def test_encoding_in_train_mode_gives_the_eval_mode_answer():
    model = polymodal.create_model("shapes-cnn-tiny", texts=CAPTIONS)
    images = torch.randint(0, 256, (4, 3, 64, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    reference = model.eval().encode_image(images)
    assert torch.allclose(model.train().encode_image(images), reference, atol=1e-6)  # BatchNorm in eval mode
    assert model.training
