"""Streaming training data from WebDataset shards: conversion, sharding, resume, bad shards, training."""

import io
import json
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds
from PIL import Image
from typer.testing import CliRunner

import polymodal
from polymodal.cli import app
from polymodal.data import load_records
from polymodal.data.formats.shards import INDEX, find_shards, is_shard_source
from polymodal.data.pairs import ImageTextPairs
from polymodal.data.streaming import StreamingPairs
from polymodal.evaluate import evaluate
from polymodal.index.sources import iter_source
from polymodal.train import loop
from polymodal.train.loop import TrainConfig, train


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """A 720-image ShapesWorld (600 train) and its shards, 50 samples each, made through the CLI."""
    from polymodal.data.synthetic.shapes import ShapesConfig, generate

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("stream")
    generate(root / "data", ShapesConfig(n_train=600, n_val=20, n_test=100, n_unseen=0, seed=3), workers=1,
             progress=False)
    result = CliRunner().invoke(app, ["data", "convert", str(root / "data"), str(root / "shards"), "--to",
                                      "webdataset", "--shard-size", "50"])
    assert result.exit_code == 0, result.output
    return root


def _ids(batches) -> list[str]:
    return [i for b in batches for i in b.ids]


def test_round_trip_keeps_every_record_and_pixel(shards):
    index = json.loads((shards / "shards" / INDEX).read_text())
    assert [s["samples"] for s in index["splits"]["train"]] == [50] * 12 and index["kind"] == "shapesworld"
    assert is_shard_source(shards / "shards") and not is_shard_source(shards / "data")
    data = load_records(shards / "data")
    memory = ImageTextPairs(data.split("train"), 64, progress=False)
    stream = StreamingPairs(str(shards / "shards"), 64, workers=0)
    assert stream.kind.name == "shapesworld" and len(stream) == 600
    by_id = {r.id: (r, memory.images[i]) for i, r in enumerate(memory.records)}
    seen = 0
    for batch in stream.batches(64, seed=0, epoch=0, drop_last=False):
        for image, caption, rid in zip(batch.images, batch.captions, batch.ids, strict=True):
            record, pixels = by_id[rid]
            assert torch.equal(image, pixels) and caption in record.text
            seen += 1
    assert seen == 600 and not len(stream.skips)
    # A brace pattern and img2dataset's layout (a bare directory of tars) name the same samples.
    pattern = str(shards / "shards" / "train-{000000..000011}.tar")
    assert find_shards(pattern).samples == 600


def test_ranks_and_workers_see_every_sample_once_per_epoch(shards):
    stream = StreamingPairs(str(shards / "shards"), 64, workers=2, shuffle_buffer=100)
    orders = []
    for epoch in (0, 1):
        ids = []
        for rank in (0, 1):  # two DDP ranks x two DataLoader workers: 12 shards dealt four ways
            ids += _ids(stream.batches(64, seed=0, epoch=epoch, rank=rank, world_size=2, drop_last=False))
        counts = Counter(ids)
        assert len(counts) == 600 and set(counts.values()) == {1}
        orders.append(ids)
    assert orders[0] != orders[1]  # a new shuffle each epoch


def test_resumed_stream_equals_an_uninterrupted_one(shards):
    stream = StreamingPairs(str(shards / "shards"), 64, workers=2, shuffle_buffer=100)
    full = [b.ids for b in stream.batches(32, seed=5, epoch=2)]
    for stop in (1, 4):  # the next batch comes from worker 1, then 0: the order survives either restart
        epoch = stream.batches(32, seed=5, epoch=2)
        head = [next(epoch) for _ in range(stop)]
        rest = [b.ids for b in stream.batches(32, seed=5, epoch=2, position=head[-1].position)]
        assert [b.ids for b in head] + rest == full


def test_img2dataset_output_directory_is_streamed(shards, tmp_path):
    """img2dataset writes NNNNN.tar with {key}.jpg/.txt/.json (json: caption, url, status...) and
    NNNNN_stats.json and NNNNN.parquet beside each; the counts come from the stats files."""
    with tarfile.open(shards / "shards" / "train-000000.tar") as f:
        png = f.extractfile(next(m for m in f if m.name.endswith(".png"))).read()
    jpg = io.BytesIO()
    Image.open(io.BytesIO(png)).save(jpg, format="JPEG")
    for shard in range(2):
        with wds.TarWriter(str(tmp_path / f"{shard:05d}.tar"), encoder=False) as sink:
            for i in range(5):
                key = f"{shard:05d}{i:04d}"
                meta = {"key": key, "caption": f"caption {key}", "status": "success"}
                sink.write({"__key__": key, "jpg": jpg.getvalue(), "txt": b"ignored when json has one",
                            "json": json.dumps(meta).encode()})
        (tmp_path / f"{shard:05d}_stats.json").write_text(json.dumps({"successes": 5, "count": 6}))
        (tmp_path / f"{shard:05d}.parquet").write_bytes(b"PAR1")  # beside the tars, not read
    stream = StreamingPairs(str(tmp_path), 64, workers=0)
    assert len(stream) == 10 and stream.kind.name == "generic"
    batches = list(stream.batches(4, seed=0, epoch=0, drop_last=False))
    assert sorted(_ids(batches)) == [f"{s:05d}{i:04d}" for s in range(2) for i in range(5)]
    assert all(c == f"caption {i}" for b in batches for c, i in zip(b.captions, b.ids, strict=True))
    assert batches[0].images.shape[1:] == (3, 64, 64)


def _bad_shards(tmp_path, good_tar):
    """A truncated copy of a good shard, and a shard with an unreadable image and a caption-less sample."""
    raw = good_tar.read_bytes()
    (tmp_path / "a-truncated.tar").write_bytes(raw[: len(raw) // 2 + 100])
    with tarfile.open(good_tar) as f:
        png = f.extractfile(next(m for m in f if m.name.endswith(".png"))).read()
    with wds.TarWriter(str(tmp_path / "b-bad.tar"), encoder=False) as sink:
        sink.write({"__key__": "ok", "png": png, "txt": b"a red circle"})
        sink.write({"__key__": "broken", "png": b"not an image", "txt": b"a blue square"})
        sink.write({"__key__": "mute", "png": png, "json": json.dumps({"id": "mute"}).encode()})
    return tmp_path


def test_bad_shards_and_samples_are_skipped_counted_and_named(shards, tmp_path, capsys):
    folder = _bad_shards(tmp_path, shards / "shards" / "train-000000.tar")
    stream = StreamingPairs(str(folder), 64, workers=0, shuffle_buffer=1)
    ids = _ids(stream.batches(8, seed=0, epoch=0, drop_last=False))
    assert "ok" in ids and "broken" not in ids and "mute" not in ids
    assert 20 <= len(ids) < 50  # the truncated shard's readable samples are kept
    reasons = dict(stream.skips.skipped)
    assert any(w.endswith("b-bad.tar:mute") and r == "missing caption" for w, r in reasons.items())
    assert any(w.endswith("b-bad.tar:broken.png") or w.endswith("b-bad.tar:broken") for w in reasons)
    assert any("a-truncated.tar" in w for w in reasons)
    err = capsys.readouterr().err
    assert "a-truncated.tar" in err and all("\n" not in line for line in err.splitlines())


def test_training_from_shards_learns_and_resumes_on_the_same_samples(shards, tmp_path, monkeypatch):
    cfg = TrainConfig(data=str(shards / "shards"), out=str(tmp_path / "full"), model="shapes-cnn-tiny", epochs=3,
                      batch_size=50, lr=3e-3, eval_images=0, progress=False, workers=1, save_every=4,
                      sample_log=str(tmp_path / "full.jsonl"))
    train(cfg)
    model = polymodal.load(tmp_path / "full")
    t2i = evaluate(model, load_records(shards / "data"), splits=["test"], progress=False)["test"]["text_to_image"]
    assert t2i["R@10"] > 0.3, t2i  # chance on 100 images: 0.1

    # The same run, killed in step 18 (mid-epoch 2, after the checkpoint taken after step 16), then resumed.
    real_step, calls = loop._step, []

    def crash_at_18(*args):
        calls.append(1)
        if len(calls) == 18:
            raise KeyboardInterrupt
        return real_step(*args)

    broken = TrainConfig(**{**cfg.__dict__, "out": str(tmp_path / "cut"), "sample_log": str(tmp_path / "cut.jsonl")})
    monkeypatch.setattr(loop, "_step", crash_at_18)
    with pytest.raises(KeyboardInterrupt):
        train(broken)
    monkeypatch.setattr(loop, "_step", real_step)
    assert torch.load(tmp_path / "cut" / loop.STATE_FILE, weights_only=False)["position"] is not None
    train(TrainConfig(**{**broken.__dict__, "resume": True}))

    def by_step(path):
        return {row["step"]: row["ids"] for row in map(json.loads, path.read_text().splitlines())}

    full, cut = by_step(tmp_path / "full.jsonl"), by_step(tmp_path / "cut.jsonl")
    assert len(full) == 3 * 12 and cut == full
    assert np.mean([len(set(ids)) for ids in full.values()]) == 50


def test_shards_read_as_records_for_eval_and_info(shards, tmp_path, monkeypatch):
    monkeypatch.setenv("POLYMODAL_CACHE", str(tmp_path / "cache"))
    data, back = load_records(shards / "data"), load_records(shards / "shards")
    assert back.splits == data.splits and not len(back.skips)
    by_id = {r.id: r for r in data.records}
    for r in back.records:  # every record whole, every image byte for byte
        assert r.to_json() | {"image": None} == by_id[r.id].to_json() | {"image": None}
        assert back.path(r.image).read_bytes() == data.path(by_id[r.id].image).read_bytes()
    extracted = back.root
    assert load_records(shards / "shards").root == extracted  # extracted once, then reused
    assert not list(extracted.parent.glob("*.tmp-*"))
    result = CliRunner().invoke(app, ["data", "info", str(shards / "shards")])
    assert result.exit_code == 0 and "test" in result.output and "100" in result.output
    items = list(iter_source(shards / "shards"))  # what `polymodal index build shards/` adds
    assert len(items) == 720 and all(i.error is None and Path(i.path).is_file() for i in items)


def test_bad_shards_read_as_records_are_skipped_and_named(shards, tmp_path, monkeypatch):
    monkeypatch.setenv("POLYMODAL_CACHE", str(tmp_path / "cache"))
    (tmp_path / "in").mkdir()
    data = load_records(_bad_shards(tmp_path / "in", shards / "shards" / "train-000000.tar"))
    ids = {r.id for r in data.records}
    assert "ok" in ids and "mute" in ids and 20 <= len(ids) < 50  # "mute" has a JSON record: a caption-less record
    reasons = dict(data.skips.skipped)
    assert any("a-truncated.tar" in w and "unreadable shard" in r for w, r in reasons.items())
