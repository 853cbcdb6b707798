"""Unit tests for small pieces that the end-to-end tests only reach indirectly: the learning-rate
schedule, the optimizer's parameter groups, atomic writes, the registry and the index's shard writer."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from polymodal.errors import DataError
from polymodal.index.pipeline import BuildReport, ShardWriter
from polymodal.index.sources import Item
from polymodal.index.stages import EncodedBatch
from polymodal.index.store import Index
from polymodal.registry import Registry, UnknownNameError
from polymodal.train.optim import build_optimizer, lr_at
from polymodal.utils import atomic_path

# -- lr_at ---------------------------------------------------------------------------------------------


def test_lr_warms_up_linearly_then_decays_by_cosine():
    base, warmup = 1e-3, 0.1
    assert lr_at(0.0, base, warmup) == 0.0
    assert lr_at(0.05, base, warmup) == pytest.approx(base / 2)
    assert lr_at(warmup, base, warmup) == pytest.approx(base)
    assert lr_at(0.55, base, warmup) == pytest.approx(base / 2)  # half-way through the cosine
    assert lr_at(1.0, base, warmup) == pytest.approx(0.0, abs=1e-12)
    after = [lr_at(p, base, warmup) for p in np.linspace(warmup, 1.0, 50)]
    assert all(a >= b for a, b in zip(after, after[1:]))


def test_lr_floor_and_progress_past_the_end():
    base, warmup = 2e-3, 0.0
    assert lr_at(1.0, base, warmup, min_ratio=0.1) == pytest.approx(0.1 * base)
    assert lr_at(0.5, base, warmup, min_ratio=0.1) == pytest.approx(base * (0.1 + 0.9 * 0.5))
    assert lr_at(1.7, base, warmup, min_ratio=0.1) == pytest.approx(0.1 * base)  # clamped, no second cycle
    assert lr_at(0.25, base, warmup) == pytest.approx(base * 0.5 * (1 + math.cos(math.pi * 0.25)))


# -- build_optimizer -----------------------------------------------------------------------------------


class _Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(4, 3)
        self.pos_embed = nn.Parameter(torch.zeros(5, 4))
        self.logit_scale = nn.Parameter(torch.tensor(2.0))
        self.frozen = nn.Linear(4, 4)
        self.frozen.requires_grad_(False)


def test_optimizer_decays_matrices_only_and_skips_frozen_parameters():
    model = _Tiny()
    opt = build_optimizer(model, lr=3e-4, weight_decay=0.2)
    decay, no_decay = opt.param_groups
    ids = lambda params: {id(p) for p in params}  # noqa: E731
    assert ids(decay["params"]) == {id(model.proj.weight)}
    assert ids(no_decay["params"]) == {id(model.proj.bias), id(model.pos_embed), id(model.logit_scale)}
    assert (decay["weight_decay"], no_decay["weight_decay"]) == (0.2, 0.0)
    assert all(g["lr"] == 3e-4 and g["betas"] == (0.9, 0.98) and g["eps"] == 1e-6 for g in opt.param_groups)
    assert isinstance(opt, torch.optim.AdamW)


def test_optimizer_step_shrinks_only_decayed_weights():
    model = _Tiny()
    opt = build_optimizer(model, lr=0.1, weight_decay=0.5)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        if p.requires_grad:
            p.grad = torch.zeros_like(p)  # no gradient signal: only weight decay can move a parameter
    opt.step()
    assert torch.allclose(model.proj.weight, before["proj.weight"] * (1 - 0.1 * 0.5))
    for name in ("proj.bias", "pos_embed", "logit_scale", "frozen.weight"):
        assert torch.equal(dict(model.named_parameters())[name], before[name]), name


# -- atomic_path ---------------------------------------------------------------------------------------


def test_atomic_path_renames_on_success(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with atomic_path(target) as tmp:
        assert tmp != target and tmp.parent == target.parent
        tmp.write_text("new")
        assert target.read_text() == "old"  # nothing visible until the block ends
    assert target.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


def test_atomic_path_leaves_no_half_written_file_on_error(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError, match="disk full"), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("disk full")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]
    with pytest.raises(RuntimeError), atomic_path(tmp_path / "new.txt") as tmp:
        tmp.write_text("half")
        raise RuntimeError
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


def test_atomic_path_replaces_a_directory_whole(tmp_path):
    target = tmp_path / "model"
    target.mkdir()
    (target / "stale.bin").write_text("stale")
    with atomic_path(target) as tmp:
        tmp.mkdir()
        (tmp / "fresh.bin").write_text("fresh")
    assert [p.name for p in target.iterdir()] == ["fresh.bin"]
    with pytest.raises(ValueError), atomic_path(target) as tmp:
        tmp.mkdir()
        (tmp / "partial.bin").write_text("partial")
        raise ValueError
    assert [p.name for p in target.iterdir()] == ["fresh.bin"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


# -- Registry ------------------------------------------------------------------------------------------


def test_registry_register_get_and_list_with_patterns():
    reg: Registry[object] = Registry("widget")
    marker = object()
    assert reg.register("shapes-cnn-tiny", marker) is marker

    @reg.register("shapes-vit-small")
    def make_vit():
        return "vit"

    reg.register("vqa-rn", len)
    assert reg.get("shapes-cnn-tiny") is marker
    assert reg.get("shapes-vit-small") is make_vit and make_vit() == "vit"  # the decorator returns the function
    assert reg.list() == ["shapes-cnn-tiny", "shapes-vit-small", "vqa-rn"]
    assert reg.list("shapes-*") == ["shapes-cnn-tiny", "shapes-vit-small"]
    assert reg.list("*-rn") == ["vqa-rn"]
    assert reg.list("nothing*") == []
    assert "vqa-rn" in reg and "vqa" not in reg and len(reg) == 3


def test_registry_unknown_name_names_the_kind_and_close_matches():
    reg: Registry[int] = Registry("model")
    reg.register("shapes-cnn-small", 1)
    reg.register("shapes-cnn-tiny", 2)
    with pytest.raises(UnknownNameError) as info:
        reg.get("shapes-cnn-smal")
    message = str(info.value)
    assert "unknown model 'shapes-cnn-smal'" in message and "shapes-cnn-small" in message
    assert isinstance(info.value, KeyError)  # callers that catch KeyError still work
    with pytest.raises(UnknownNameError, match="unknown model 'zzz'"):
        reg.get("zzz")


# -- ShardWriter ---------------------------------------------------------------------------------------


def _batch(entries: list[tuple[str, str | None, str | None]], dim: int = 4) -> EncodedBatch:
    """entries: (path, hash, error); vectors only for the items without an error, in order."""
    good = [i for i, (_, _, err) in enumerate(entries) if err is None]
    vectors = np.stack([np.full(dim, i, np.float32) for i in good]) if good else np.zeros((0, dim), np.float32)
    items = [Item(path, caption=f"caption of {path}") for path, _, _ in entries]
    return EncodedBatch(items, [h for _, h, _ in entries], [e for _, _, e in entries], vectors)


@pytest.fixture
def index(tmp_path):
    with Index.create(tmp_path / "index", "test-model", "test-model-id", dim=4) as idx:
        yield idx


def test_shard_writer_fills_shards_drops_duplicates_and_counts_skips(index):
    report = BuildReport()
    writer = ShardWriter(index, shard_size=2, report=report, strict=False)
    writer.write(_batch([("/a.png", "ha", None), ("/bad.png", None, "not an image"), ("/b.png", "hb", None),
                         ("/a-copy.png", "ha", None), ("/c.png", "hc", None)]))
    assert len(list(index.shard_dir.glob("*.npz"))) == 1 and len(index) == 2  # one full shard; /c.png waits
    assert report.duplicates == 1 and report.skipped == [("/bad.png", "not an image")]
    assert index.skipped() == [("/bad.png", "not an image")]
    writer.flush()
    assert len(list(index.shard_dir.glob("*.npz"))) == 2 and len(index) == 3 and report.added == 3
    _, vectors = index.load_vectors()
    assert sorted(vectors[:, 0].tolist()) == [0.0, 2.0, 4.0]  # the rows of a, b and c, not of the duplicate
    writer.flush()  # an empty buffer writes no shard
    assert len(list(index.shard_dir.glob("*.npz"))) == 2


def test_shard_writer_skips_content_already_indexed(index):
    earlier = ShardWriter(index, 8, BuildReport(), strict=False)
    earlier.write(_batch([("/a.png", "ha", None)]))
    assert len(index) == 0  # buffered, not yet committed
    earlier.flush()
    assert len(index) == 1
    report = BuildReport()
    writer = ShardWriter(index, 1, report, strict=False)
    writer.write(_batch([("/renamed-a.png", "ha", None), ("/b.png", "hb", None)]))
    assert len(index) == 2 and report.added == 1 and report.duplicates == 1
    assert index.known_hashes(["ha", "hb"]) == {"ha": "/a.png", "hb": "/b.png"}


def test_shard_writer_strict_stops_at_the_first_bad_item(index):
    writer = ShardWriter(index, 2, BuildReport(), strict=True)
    with pytest.raises(DataError, match="/bad.png: truncated file"):
        writer.write(_batch([("/ok.png", "h1", None), ("/bad.png", None, "truncated file")]))
    assert len(index) == 0 and index.skipped() == []
