"""Moving-ShapesWorld (issue 13): the clip dataset on disk, its captions and GIFs, and the motion
checker, which agrees with the generator on rendered clips and rejects a clip whose caption
states the opposite direction."""

from __future__ import annotations

import json
import random

import imageio.v3 as iio
import numpy as np
import pytest
from PIL import Image

from polymodal.data import load_records
from polymodal.data.synthetic.moving_shapes import (
    OPPOSITE,
    MovingShapesConfig,
    describe_clip,
    generate,
    load_clip,
    render_clip,
    sample_clip,
    save_clip_gif,
    split_combos,
)
from polymodal.data.synthetic.shapes import COLOURS, SHAPES, TRAIN_WORDS, UNSEEN_COMBOS
from polymodal.evaluate.motion_checker import check_motion, event_results, motion_accuracy


@pytest.fixture(scope="module")
def clips_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("moving")
    cfg = MovingShapesConfig(n_train=8, n_val=4, n_test=4, n_unseen=4, captions_per_clip=2, seed=1)
    return generate(out, cfg, workers=1, progress=False)


def _clips(n: int, seed: int, split: str = "test"):
    rng = random.Random(seed)
    combos, must = split_combos(split)
    return [sample_clip(rng, combos, must) for _ in range(n)]


def _names(word: str) -> list[str]:
    return TRAIN_WORDS.get(word, [word])


def test_the_dataset_on_disk(clips_dir):
    data = load_records(clips_dir)
    assert data.splits == {"train": 8, "val": 4, "test": 4, "test_unseen": 4}
    meta = json.loads((clips_dir / "dataset.json").read_text())
    assert meta["generator"] == "moving_shapes" and meta["frames"] == 8 and meta["image_size"] == 32
    unseen = set(UNSEEN_COMBOS)
    for rec in data:
        a = rec.attributes
        assert a["clip"] == f"clips/{rec.split}/{rec.id}.png" and rec.image == f"images/{rec.split}/{rec.id}.png"
        clip = load_clip(clips_dir / a["clip"], 8)
        assert clip.shape == (8, 32, 32, 3) and clip.dtype == np.uint8
        assert np.array_equal(clip[0], np.asarray(Image.open(data.path(rec.image)).convert("RGB")))
        assert np.array_equal(clip, np.stack([np.asarray(f) for f in render_clip(a)]))  # the truth redraws it
        assert 1 <= len(a["objects"]) <= 2 and len(a["events"]) == len(a["objects"])
        for caption in rec.text:
            for o in a["objects"]:
                assert any(c in caption for c in _names(o["colour"])) and any(s in caption for s in _names(o["shape"]))
        pairs = {(o["colour"], o["shape"]) for o in a["objects"]}
        pairs |= {(e["to"], a["objects"][e["object"]]["shape"]) for e in a["events"] if e["event"] == "recolour"}
        if rec.split == "test_unseen":
            assert {(o["colour"], o["shape"]) for o in a["objects"]} & unseen
        else:
            assert not pairs & unseen


def test_clips_stay_in_frame_and_captions_state_the_events():
    for frames, a in _clips(40, seed=2):
        assert len(frames) == 8 and frames[0].size == (32, 32)
        for e in a["events"]:
            o = a["objects"][e["object"]]
            assert e["event"] in ("move", "stay", "grow", "recolour")
            assert o["size"] == ("small" if e["event"] == "grow" else "large")
            if e["event"] == "move":
                assert 8 <= e["distance"] <= 12 and e["direction"] in OPPOSITE
            if e["event"] == "recolour":
                assert e["to"] in COLOURS and e["to"] != o["colour"]
        # nothing touches the border: every object is whole in every frame
        for f in frames:
            px = np.asarray(f)
            assert (px[0] == px[0, 0]).all() and (px[-1] == px[0, 0]).all()
            assert (px[:, 0] == px[0, 0]).all() and (px[:, -1] == px[0, 0]).all()
    caption = describe_clip({"objects": [{"colour": "red", "shape": "circle", "size": "large", "x": 20, "y": 16},
                                         {"colour": "blue", "shape": "square", "size": "large", "x": 8, "y": 8}],
                             "events": [{"object": 0, "event": "move", "direction": "left", "distance": 10},
                                        {"object": 1, "event": "stay"}]}, random.Random(0), canonical=True)
    assert caption == "a red circle moves to the left while a blue square stays"


def test_the_motion_checker_agrees_with_the_generator_and_rejects_reversed_directions():
    clips = _clips(60, seed=3)
    assert motion_accuracy([np.stack([np.asarray(f) for f in fr]) for fr, _ in clips], [a for _, a in clips]) >= 0.97
    moving = [(fr, a) for fr, a in clips if any(e["event"] == "move" for e in a["events"])]
    assert len(moving) >= 20
    rejected = []
    for frames, a in moving:
        reversed_ = [{**e, "direction": OPPOSITE[e["direction"]]} if e["event"] == "move" else e for e in a["events"]]
        rejected.append(not check_motion(frames, {"objects": a["objects"], "events": reversed_}))
    assert np.mean(rejected) >= 0.95


def test_every_event_kind_is_checked_both_ways():
    base = {"colour": "green", "shape": "star", "size": "large", "x": 16.0, "y": 16.0}
    stay = {"objects": [base], "events": [{"object": 0, "event": "stay"}]}
    still = render_clip(stay)
    assert event_results(still, stay) == [True]
    for event, obj in (({"event": "move", "direction": "up", "distance": 10.0}, {**base, "y": 21.0}),
                       ({"event": "grow"}, {**base, "size": "small"}),
                       ({"event": "recolour", "to": "white"}, base)):
        spec = {"objects": [obj], "events": [{"object": 0, **event}]}
        clip = render_clip(spec)
        assert check_motion(clip, spec), event
        assert not check_motion(still, {"objects": [base], "events": [{"object": 0, **event}]}), event
        if event["event"] == "move":
            assert not check_motion(clip, {"objects": [obj], "events": [{"object": 0, "event": "stay"}]})
    # an object the clip does not hold fails, and `strict` checks the shape too
    assert not check_motion(still, {"objects": [{**base, "colour": "red"}], "events": [{"object": 0, "event": "stay"}]})
    other = next(s for s in SHAPES if s != "star")
    assert not check_motion(still, {"objects": [{**base, "shape": other}], "events": stay["events"]}, strict=True)


def test_gif_writer_keeps_every_frame(tmp_path):
    frames, a = _clips(1, seed=4)[0]
    for clip in (frames, render_clip({"objects": a["objects"], "events": [{"object": i, "event": "stay"}
                                                                           for i in range(len(a["objects"]))]})):
        path = save_clip_gif(clip, tmp_path / "clip.gif", fps=8)
        back = iio.imread(path, index=None)
        assert back.shape[:3] == (8, 32, 32)
        assert np.abs(back[..., :3].astype(int) - np.stack([np.asarray(f) for f in clip])).max() <= 1
    assert [p.name for p in tmp_path.iterdir()] == ["clip.gif"]  # no temporary file left behind
