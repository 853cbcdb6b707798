"""Caption metrics (BLEU-4, CIDEr-D against hand computations, METEOR where Java runs), the facts a
caption states, the nearest-neighbour captioning baseline, and `polymodal eval` / `polymodal
caption baseline` on a tiny captioner and a tiny aligned model."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys

import pytest
import torch

import polymodal
from polymodal.data import load_records
from polymodal.data.schema import RecordSet
from polymodal.data.synthetic.shapes import SHAPES
from polymodal.evaluate.caption_facts import score_caption, stated_facts
from polymodal.evaluate.caption_metrics import caption_metrics, meteor_available, tokenize
from polymodal.evaluate.captioning import evaluate_captioner
from polymodal.evaluate.nn_captioning import NearestNeighbourCaptioner, nearest_neighbour_captions
from polymodal.evaluate.report import write_eval_report
from polymodal.models.checkpoint import save_checkpoint
from polymodal.models.generative.captioner import create_captioner, save_captioner

TRUE = "a big red circle is to the left of a small blue square"
SHUFFLED = "square blue small a of left the to is circle red big a"


def test_captions_are_tokenised_as_coco_does():
    assert tokenize("A big, red circle.\n  Left of|||it!") == "a big red circle left of it"


def test_bleu_4_matches_a_hand_computation():
    # n-gram precisions 4/5, 3/4, 2/3, 1/2, same length (no brevity penalty)
    figures = caption_metrics(["a b c d e"], [["a b c d f"]], meteor=False)
    assert figures["bleu_4"] == pytest.approx((4 / 5 * 3 / 4 * 2 / 3 * 1 / 2) ** 0.25, abs=1e-6)
    assert figures["meteor"] is None


def test_the_true_caption_scores_highest_and_its_words_shuffled_lower():
    refs = [[TRUE, "an image of a small blue square to the right of a big red circle"], ["a green star"]]
    same = caption_metrics([TRUE, "a green star"], refs, meteor=False)
    shuffled = caption_metrics([SHUFFLED, "a green star"], refs, meteor=False)
    other = caption_metrics(["a green star", "a green star"], refs, meteor=False)
    assert same["bleu_4"] == pytest.approx(1.0)
    assert same["bleu_4"] > shuffled["bleu_4"] and same["cider_d"] > shuffled["cider_d"] > other["cider_d"]


def test_cider_d_matches_a_hand_computation():
    # Two images, so every reference n-gram has idf log(2 / 1) = L, as has an unseen one
    # (df floored at 1); each image's score is 10 x the mean over n = 1..4 of the clipped
    # cosine of tf-idf vectors times exp(-delta^2 / 72), delta the difference in length.
    # "a b" vs "a b": 1-grams and 2-grams match (cosine 1), no 3- or 4-grams: 10 * 2 / 4 = 5.
    # "c e" vs "c d": 1-gram cosine L^2 / (sqrt2 L)^2 = 1/2, nothing else: 10 * 0.5 / 4 = 1.25.
    assert caption_metrics(["a b", "c e"], [["a b"], ["c d"]], meteor=False)["cider_d"] == pytest.approx(3.125)
    # "a b b" vs "a b": 1-grams (L, 2L) vs (L, L) clipped to 2L^2 / (sqrt5 L sqrt2 L); 2-grams
    # (ab, bb) vs (ab): 1 / sqrt2; one word longer: exp(-1/72).
    first = 10 * (2 / math.sqrt(10) + 1 / math.sqrt(2)) / 4 * math.exp(-1 / 72)
    assert caption_metrics(["a b b", "c d"], [["a b"], ["c d"]], meteor=False)["cider_d"] == pytest.approx(
        (first + 5) / 2)
    # one image alone: every n-gram is in every image's references, idf 0
    assert caption_metrics(["a b"], [["a b"]], meteor=False)["cider_d"] == 0


def test_bad_input_is_one_clear_error():
    with pytest.raises(ValueError, match="2 captions for 1 images"):
        caption_metrics(["a", "b"], [["a"]])
    with pytest.raises(ValueError, match="image 1 has no reference caption"):
        caption_metrics(["a", "b"], [["a"], []])


@pytest.mark.slow
@pytest.mark.skipif(not meteor_available(),  # `make test` installs one with apt; only a machine without apt lacks it
                    reason="METEOR 1.5 needs a Java runtime and `make test` could not install one")
def test_meteor_runs_and_gives_the_true_caption_nearly_full_marks():
    # one call: each starts a JVM that loads METEOR's paraphrase table (10-20 s)
    assert 0.9 < caption_metrics([TRUE, "a green star"], [[TRUE], ["a green star"]])["meteor"] <= 1.0


def test_stated_facts_are_the_facts_score_caption_counts(shapes_dir):
    records = load_records(shapes_dir).split("test").records[:30]
    wrong = "a big green star is to the left of a small red circle"
    for record in records:
        for caption in [*record.text, wrong]:
            facts, counts = stated_facts(caption, record.attributes), score_caption(caption, record.attributes)
            assert len(facts) == sum(counts.stated.values())
            assert sum(ok for _, _, ok in facts) == sum(counts.correct.values())
            if caption != wrong:  # a reference caption states only true facts
                assert all(ok for _, _, ok in facts)


@pytest.fixture(scope="module")
def aligned():
    torch.manual_seed(0)
    return polymodal.create_model("shapes-cnn-tiny", texts=["a small red circle", "a big blue square"])


def duplicates(data: RecordSet, n: int) -> RecordSet:
    """Test records whose images are the first n training images."""
    train = data.split("train").records[:n]
    return RecordSet(data.root, [dataclasses.replace(r, id=f"copy-{r.id}", split="test") for r in train], data.skips)


def test_the_baseline_returns_the_caption_of_an_exact_duplicate(shapes_dir, aligned):
    data = load_records(shapes_dir)
    copies = duplicates(data, 20)
    assert nearest_neighbour_captions(aligned, data.split("train"), copies) == [r.text[0] for r in copies.records]
    baseline = NearestNeighbourCaptioner(aligned, data.split("train"))
    scores = evaluate_captioner(baseline, RecordSet(data.root, copies.records), splits=("test",), meteor=False)
    assert scores["test"]["fact_precision"] == 1.0 and scores["test"]["bleu_4"] == pytest.approx(1.0)
    other = baseline.caption(torch.zeros(3, 3, 64, 64, dtype=torch.uint8))
    assert len(other) == 3 and set(other) <= set(baseline.train_captions)
    assert baseline.caption([]) == []


def test_the_report_shows_the_caption_table_and_marked_facts(shapes_dir, tmp_path):
    data = load_records(shapes_dir)
    torch.manual_seed(0)
    captioner = create_captioner("shapes-captioner-tiny", [c for r in data.split("train").records for c in r.text])
    captioned: dict = {}
    results = evaluate_captioner(captioner, data, limit=4, meteor=False, captioned=captioned)
    assert set(results) == {"test", "test_unseen"} and results["test"]["captions"] == 4
    # put in known captions: one naming a shape the scene lacks, one of its references
    record = captioned["test"].records[0]
    absent = next(s for s in SHAPES if s not in {o["shape"] for o in record.attributes["objects"]})
    captioned["test"].captions[0] = f"a red {absent}"
    captioned["test"].captions[1] = captioned["test"].records[1].text[0]
    page = write_eval_report(tmp_path / "report.html", "tiny <captioner>", results, captioned).read_text()
    assert '<table class="caption-metrics">' in page and "CIDEr-D" in page and "fact precision" in page
    assert page.count('<tr><td>test</td><td><img') == 4 and page.count('<tr><td>test_unseen</td><td><img') == 4
    assert "tiny &lt;captioner&gt;" in page and record.text[-1] in page
    assert f'class="fact false" title="object">&#10007; {absent}<' in page
    assert 'class="fact true"' in page and captioned["test"].records[1].text[0] in page


def cli(*args):
    return subprocess.run([sys.executable, "-m", "polymodal.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "COLUMNS": "250"})


@pytest.mark.slow
def test_polymodal_eval_and_caption_baseline_on_tiny_models(shapes_dir, aligned, tmp_path):
    data = load_records(shapes_dir)
    torch.manual_seed(0)
    save_captioner(create_captioner("shapes-captioner-tiny", [c for r in data.split("train").records for c in r.text]),
                   tmp_path / "cap")
    run = cli("eval", tmp_path / "cap", shapes_dir, "--max-images", "4", "--report", tmp_path / "r.html",
              "--json", tmp_path / "m.json")
    assert run.returncode == 0, run.stderr
    assert "BLEU-4" in run.stdout and "test_unseen" in run.stdout and "report:" in run.stdout
    figures = json.loads((tmp_path / "m.json").read_text())
    assert {"fact_precision", "chair_i", "bleu_4", "cider_d", "meteor"} <= set(figures["test"])
    assert '<table class="caption-metrics">' in (tmp_path / "r.html").read_text()
    save_checkpoint(aligned, tmp_path / "aligned")
    base = cli("caption", "baseline", shapes_dir, "--aligned", tmp_path / "aligned", "--limit", "20", "--no-meteor",
               "--json", tmp_path / "b.json")
    assert base.returncode == 0, base.stderr
    assert "nearest-neighbour" in base.stdout and "CIDEr-D" in base.stdout
    baseline = json.loads((tmp_path / "b.json").read_text())
    assert baseline["test"]["captions"] == 20 and baseline["test"]["meteor"] is None
    assert baseline["test"]["fact_precision"] > 0  # train captions are true of some scene: some facts hold
