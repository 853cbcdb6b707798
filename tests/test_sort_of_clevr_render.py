"""Sort-of-CLEVR rendering variants: the pixels change, the scene and its answers do not."""

import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from polymodal.cli import app
from polymodal.data.formats import load_records
from polymodal.data.synthetic.sort_of_clevr import COLOURS, SortOfClevrConfig, answer, generate, render
from polymodal.data.synthetic.sort_of_clevr_render import HELDOUT, MIXED, render_variants

SIZES = {"n_train": 32, "n_val": 0, "n_test": 4, "seed": 5}


@pytest.fixture(scope="module")
def plain_and_mixed(tmp_path_factory):
    root = tmp_path_factory.mktemp("soc-render")
    generate(root / "plain", SortOfClevrConfig(**SIZES, render="pil", ternary=True), progress=False)
    generate(root / "mixed", SortOfClevrConfig(**SIZES, ternary=True), progress=False)  # the default: mixed
    return root / "plain", root / "mixed"


def pixels(root, rec) -> np.ndarray:
    return np.asarray(Image.open(root / rec.image).convert("RGB")).astype(int)  # (75, 75, 3)


def test_variants_keep_the_scene_and_its_answers(plain_and_mixed):
    plain_dir, mixed_dir = plain_and_mixed
    plain, mixed = load_records(plain_dir).records, load_records(mixed_dir).records
    assert len(plain) == len(mixed) == 36
    used = set()
    for p, m in zip(plain, mixed):
        assert m.attributes["objects"] == p.attributes["objects"]  # the same scene ...
        assert m.attributes["questions"] == p.attributes["questions"]  # ... the same questions and answers
        assert m.labels == p.labels and m.text == p.text
        objects = m.attributes["objects"]
        for q in m.attributes["questions"]:
            assert q["answer"] == answer(objects, q["colour"], q["subtype"], q.get("colour2"))
        assert p.attributes["render"] == {"variant": "pil", "blur": 0.0, "jpeg": None}
        how = m.attributes["render"]
        used.add(how["variant"])
        same = np.array_equal(pixels(plain_dir, p), pixels(mixed_dir, m))
        assert same == (how["variant"] == "pil"), how  # every other variant changes the pixels
    assert used == set(MIXED)  # every training variant is drawn
    assert {q["family"] for q in mixed[0].attributes["questions"]} == {"non-relational", "relational", "ternary"}


def test_jittered_images_still_show_each_colour_at_its_centre(plain_and_mixed):
    _, mixed_dir = plain_and_mixed
    for rec in load_records(mixed_dir).records:
        img = pixels(mixed_dir, rec)
        for o in rec.attributes["objects"]:
            centre = img[o["y"], o["x"]]
            nearest = min(COLOURS, key=lambda c: np.abs(centre - COLOURS[c]).sum())
            assert nearest == o["colour"], (rec.attributes["render"], o, centre)
            assert np.abs(centre - COLOURS[o["colour"]]).max() <= 48, (rec.attributes["render"], o, centre)


def test_plain_renderer_is_the_exact_one_of_before(plain_and_mixed):
    plain_dir, _ = plain_and_mixed
    for rec in load_records(plain_dir).records[:6]:
        img = pixels(plain_dir, rec)
        assert np.array_equal(img, np.asarray(render(rec.attributes["objects"])))
        for o in rec.attributes["objects"]:
            assert tuple(img[o["y"], o["x"]]) == COLOURS[o["colour"]]
        # No anti-aliasing, no jitter: white and the six named colours, nothing else.
        assert {tuple(c) for c in img.reshape(-1, 3)} == {(255, 255, 255), *COLOURS.values()}


def test_ternary_questions_come_last_and_leave_the_others_as_they_were(plain_and_mixed, tmp_path):
    plain_dir, _ = plain_and_mixed
    generate(tmp_path, SortOfClevrConfig(**SIZES, render="pil"), progress=False)
    two = load_records(tmp_path).records
    for with_ternary, without in zip(load_records(plain_dir).records, two):
        qs3, qs2 = with_ternary.attributes["questions"], without.attributes["questions"]
        assert len(qs2) == 20 and len(qs3) == 30 and all(q["family"] == "ternary" for q in qs3[20:])
        assert [(q["text"], q["answer"]) for q in qs3[:20]] == [(q["text"], q["answer"]) for q in qs2]
        assert all(len(q["encoding"]) == 11 for q in qs2) and all(len(q["encoding"]) == 18 for q in qs3)
    assert np.array_equal(pixels(tmp_path, two[0]), pixels(plain_dir, load_records(plain_dir).records[0]))


def test_heldout_split_is_drawn_only_with_variants_never_trained_on(tmp_path):
    generate(tmp_path, SortOfClevrConfig(n_train=12, n_val=2, n_test=2, n_heldout=6, seed=2), progress=False)
    data = load_records(tmp_path)
    assert data.splits == {"train": 12, "val": 2, "test": 2, "test_heldout": 6}
    for rec in data.records:
        variant = rec.attributes["render"]["variant"]
        assert (variant in HELDOUT) == (rec.split == "test_heldout"), (rec.split, variant)
    meta = json.loads((tmp_path / "dataset.json").read_text())
    assert meta["render_variants"]["test_heldout"] == list(HELDOUT)
    assert not set(meta["render_variants"]["train, val, test"]) & set(HELDOUT)

    assert render_variants("heldout") == HELDOUT and render_variants("pil, opencv,pil") == ("pil", "opencv")
    with pytest.raises(ValueError, match="unknown render variant 'vulkan'"):
        render_variants("pil,vulkan")
    with pytest.raises(ValueError, match="would not be held out"):
        generate(tmp_path / "x", SortOfClevrConfig(n_train=1, n_val=0, n_test=0, n_heldout=1, render="mixed,heldout"),
                 progress=False)


def test_cli_render_heldout_and_ternary_options(tmp_path):
    out = tmp_path / "soc"
    run = CliRunner().invoke(app, ["data", "sort-of-clevr", str(out), "--n", "4", "--val", "0", "--test", "2",
                                   "--render", "heldout", "--heldout", "0", "--ternary"])
    assert run.exit_code == 0, run.output
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["config"]["render"] == "heldout" and meta["config"]["ternary"] is True
    assert meta["families"] == ["non-relational", "relational", "ternary"] and "0" in meta["answers"]
    recs = load_records(out).records
    assert {r.attributes["render"]["variant"] for r in recs} == {"opencv-aa"} and len(recs[0].text) == 30

    bad = CliRunner().invoke(app, ["data", "sort-of-clevr", str(tmp_path / "bad"), "--n", "1", "--render", "vulkan"])
    assert bad.exit_code == 2 and "unknown render variant" in bad.output and not (tmp_path / "bad").exists()
