"""The demo end to end on a tiny budget: data, training, evaluation, a report a person can read."""

import json
import re

import pytest

from polymodal.demo import QUERY_SIZES, run_demo


@pytest.mark.slow
def test_demo_writes_a_complete_report(tmp_path):
    report = run_demo(tmp_path / "demo", n_train=800, n_test=200, steps=40, model="shapes-cnn-tiny")
    page = report.read_text()
    assert report == tmp_path / "demo" / "report.html"
    assert "t&rarr;i R@1" in page and "attribute binding" in page
    n_queries = 2 * len(QUERY_SIZES)  # one scene of each size from test and from test_unseen
    assert page.count("<div class=\"query\">") == n_queries
    matches = [int(m) for m in re.findall(r"(\d+) matching images? in the gallery", page)]
    assert len(matches) == n_queries and min(matches) >= 1  # every query has something to find
    assert "(unseen combination)" in page
    # Every search result is an embedded image marked hit or miss; plus the heat-map and curve.
    assert len(re.findall(r'<img class="(hit|miss)" src="data:image/png;base64,', page)) == 8 * n_queries
    # The probe table: one row per example pair, each with its image and both scores.
    probe_rows = len(re.findall(r'<tr class="(hit|miss)"><td>', page))
    assert probe_rows >= 12 and "swap object" in page and "add attribute" in page
    assert page.count("data:image/png;base64,") == 8 * n_queries + 2 + probe_rows
    assert "40 steps of 128" in page and "training took" in page
    metrics = json.loads((tmp_path / "demo" / "metrics.json").read_text())
    assert metrics["test"]["n_images"] == 200 and "unseen_gap" in metrics
