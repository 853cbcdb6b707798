import pytest
import torch

import polymodal
from polymodal.data.schema import DataError
from polymodal.errors import CheckpointError
from polymodal.models.checkpoint import load_checkpoint, save_checkpoint
from polymodal.registry import UnknownNameError

CAPTIONS = ["a small red circle left of a big blue square", "a big green star", "a little white cross above a disc"]


# shapes-cnn-words computes MiniLM's word vectors on its first use on a machine (~30 s): slow tier.
PRESETS = [pytest.param(n, marks=pytest.mark.slow) if n == "shapes-cnn-words" else n for n in polymodal.list_models()]


@pytest.mark.parametrize("name", PRESETS)
def test_every_preset_forward_backward_save_load(name, tmp_path):
    torch.manual_seed(0)
    model = polymodal.create_model(name, texts=CAPTIONS * 10)
    size = model.config.image.image_size
    images = torch.randint(0, 255, (3, 3, size, size), dtype=torch.uint8)
    ids = model.tokenizer(CAPTIONS)
    out = model(images, ids)
    assert out["image_features"].shape == out["text_features"].shape == (3, model.config.embed_dim)
    assert torch.allclose(out["image_features"].norm(dim=-1), torch.ones(3), atol=1e-5)
    loss = (out["image_features"] * out["text_features"]).sum()
    loss.backward()
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert all(p.grad is not None for p in model.image_proj.parameters())
    assert sum(p.grad.abs().sum().item() for p in trainable if p.grad is not None) > 0

    save_checkpoint(model, tmp_path / "ckpt")
    loaded = load_checkpoint(tmp_path / "ckpt")
    model.eval()
    assert torch.allclose(model.encode_image(images), loaded.encode_image(images), atol=1e-6)
    assert torch.allclose(model.encode_text(CAPTIONS), loaded.encode_text(CAPTIONS), atol=1e-6)
    assert not any(p.name.endswith(".tmp") for p in (tmp_path / "ckpt").iterdir())


def test_locked_minilm_tower_trains_only_its_projection(tmp_path):
    model = polymodal.create_model("shapes-cnn-minilm")
    assert not any(p.requires_grad for p in model.text_tower.parameters())
    assert all(p.requires_grad for p in model.text_proj.parameters())
    first = model.text_tower(model.tokenizer(["a red circle"])).pooled
    again = model.text_tower(model.tokenizer(["a red circle"])).pooled  # served from the cache
    assert torch.equal(first, again)
    # The bundled BERT is not copied into the checkpoint.
    save_checkpoint(model, tmp_path / "m")
    assert (tmp_path / "m" / "model.safetensors").stat().st_size < 20 * 2**20


@pytest.mark.slow  # the first use on a machine computes MiniLM's word vectors (~30 s)
def test_minilm_word_vectors_place_unseen_synonyms_and_stay_out_of_checkpoints(tmp_path):
    model = polymodal.create_model("shapes-cnn-words")
    embed = model.text_tower.embed
    vectors = embed.vectors  # (V, 384), frozen
    assert vectors.shape == (model.tokenizer.tok.get_vocab_size(), 384) and not vectors.requires_grad

    def cos(a: str, b: str) -> float:
        ids = [model.tokenizer.tok.token_to_id(w) for w in (a, b)]
        return float(vectors[ids[0]] @ vectors[ids[1]])

    # Words the ShapesWorld captions never use sit next to the synonym they do use.
    assert cos("tiny", "small") > cos("tiny", "large") + 0.1
    assert cos("huge", "big") > cos("huge", "small") + 0.1
    assert cos("beneath", "under") > cos("beneath", "left") + 0.1
    model.text_tower(model.tokenizer(["a tiny red box beneath a dot"])).pooled.sum().backward()
    assert embed.proj.weight.grad.abs().sum() > 0 and model.text_tower.forward_rnn.weight_ih_l0.grad is not None
    # Derived from the installed MiniLM, the vectors are not saved: the checkpoint stays small.
    save_checkpoint(model, tmp_path / "m")
    assert (tmp_path / "m" / "model.safetensors").stat().st_size < 5 * 2**20
    assert torch.equal(load_checkpoint(tmp_path / "m").text_tower.embed.vectors, vectors)


def test_unknown_preset_names_the_known_ones():
    with pytest.raises(UnknownNameError, match="shapes-cnn-small"):
        polymodal.create_model("shapes-cnn-smal", texts=CAPTIONS)


def test_missing_and_damaged_checkpoints(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        polymodal.load(tmp_path / "nothing")
    model = polymodal.create_model("shapes-cnn-tiny", texts=CAPTIONS)
    save_checkpoint(model, tmp_path / "c")
    (tmp_path / "c" / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="unreadable weights"):
        polymodal.load(tmp_path / "c")


def test_raw_inputs_and_clear_errors(tmp_path):
    from PIL import Image

    model = polymodal.create_model("shapes-cnn-tiny", texts=CAPTIONS)
    Image.new("RGB", (100, 80), (200, 10, 10)).save(tmp_path / "x.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    probs = model.similarity([tmp_path / "x.png"], CAPTIONS, softmax=True)
    assert probs.shape == (1, 3) and abs(probs.sum().item() - 1) < 1e-5
    with pytest.raises(DataError, match="broken.png: not a readable image"):
        model.encode_image([tmp_path / "broken.png"])
    with pytest.raises(DataError, match="missing.png: file not found"):
        model.encode_image([tmp_path / "missing.png"])
    with pytest.raises(ValueError, match="empty text"):
        model.encode_text(["  "])


def test_gru_text_tower_does_not_depend_on_padding_and_knows_word_order():
    from polymodal.config import TextTowerConfig
    from polymodal.modalities.text import TextGRU

    torch.manual_seed(0)
    tower = TextGRU(TextTowerConfig(kind="gru", width=16), vocab_size=20)
    ids = torch.tensor([[2, 5, 6, 7, 3, 0, 0], [2, 8, 9, 10, 11, 12, 3]])  # (B, L), 0 pads
    out = tower(ids)
    assert out.tokens.shape == (2, 7, 16) and out.pooled.shape == (2, 16)
    alone = tower(ids[:1, :5]).pooled[0]  # the same caption without the batch's padding
    assert torch.allclose(out.pooled[0], alone, atol=1e-6)
    swapped = tower(torch.tensor([[2, 7, 6, 5, 3]])).pooled[0]  # the same words, another order
    assert not torch.allclose(alone, swapped, atol=1e-3)
    out.pooled.sum().backward()
    assert tower.backward_rnn.weight_ih_l0.grad.abs().sum() > 0 and tower.embed.weight.grad.abs().sum() > 0


def test_coordinate_pool_keeps_where_each_feature_is():
    from polymodal.modalities.image import CoordinatePool

    pool = CoordinatePool(grid=8)
    left, right = torch.zeros(1, 64, 2), torch.zeros(1, 64, 2)  # (B, T, C): one feature at one cell
    left[0, 3 * 8 + 1, 0] = 1.0  # row 3, column 1
    right[0, 3 * 8 + 6, 0] = 1.0  # row 3, column 6
    a, b = pool(left), pool(right)  # (1, 3C): plain mean, x-weighted, y-weighted
    assert a.shape == (1, 6)
    assert a[0, 0] == b[0, 0]  # the same content...
    assert a[0, 2] < 0 < b[0, 2]  # ...on the left (x < 0) and on the right (x > 0)
    assert a[0, 4] == b[0, 4]  # at the same height
