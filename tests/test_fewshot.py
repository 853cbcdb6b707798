"""Few-shot classifiers on embeddings: each beats chance at one shot, and Tip-Adapter picks its
blend on the support set alone."""

import numpy as np
import pytest
import torch

from polymodal.paradigms.fewshot import (
    EmbeddedTask,
    LinearProbe,
    PrototypeClassifier,
    TipAdapter,
    digits_task,
    learning_curve,
    sample_support,
    shapes_attribute_task,
)

torch.set_num_threads(1)


def clustered(n_classes=5, per_class=60, dim=16, noise=0.6, seed=0):
    """Unit class centres plus Gaussian noise: a task whose answers are known."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_classes, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    y = np.repeat(np.arange(n_classes), per_class)
    return centres, centres[y] + noise * rng.normal(size=(len(y), dim)) / np.sqrt(dim), y


def test_support_sets_hold_k_per_class():
    y = np.repeat(np.arange(4), 10)
    idx = sample_support(y, 3, np.random.default_rng(0))
    assert sorted(np.bincount(y[idx])) == [3, 3, 3, 3] and len(set(idx)) == 12


@pytest.mark.parametrize("make", [LinearProbe, PrototypeClassifier])
def test_one_shot_beats_chance(make):
    _, x, y = clustered()
    accs = []
    for seed in range(3):
        s = sample_support(y, 1, np.random.default_rng(seed))
        accs.append((make().fit(x[s], y[s]).predict(x) == y).mean())
    assert np.mean(accs) > 0.6  # chance is 0.2


def test_tip_adapter_keeps_a_good_zero_shot_and_fixes_a_bad_one():
    centres, x, y = clustered()
    s = sample_support(y, 1, np.random.default_rng(0))
    exact = TipAdapter(centres).fit(x[s], y[s])
    assert (exact.predict(x) == y).mean() > 0.9
    # A text classifier with two classes swapped: the cache must take over where zero-shot is wrong.
    swapped = centres[[1, 0, 2, 3, 4]]
    s = sample_support(y, 4, np.random.default_rng(0))
    tip = TipAdapter(swapped).fit(x[s], y[s])
    zero_shot = ((x @ swapped.T).argmax(1) == y).mean()
    assert tip.alpha > 0 and (tip.predict(x) == y).mean() > zero_shot + 0.2


def test_learning_curve_reports_every_method_and_shot():
    centres, x, y = clustered(seed=1)
    task = EmbeddedTask("toy", list("abcde"), x[::2], y[::2], x[1::2], y[1::2], centres)
    res = learning_curve(task, shots=(1, 4), seeds=(0, 1))
    assert set(res["methods"]) == {"linear_probe", "prototype", "tip_adapter"}
    assert res["zero_shot"] > 0.9 and res["chance"] == 0.2
    for curve in res["methods"].values():
        assert len(curve[1]["runs"]) == 2 and curve[4]["mean"] > 0.6


def test_digits_curve_has_no_zero_shot_and_beats_chance():
    res = learning_curve(digits_task(), shots=(1,), seeds=(0, 1))
    assert res["zero_shot"] is None and "tip_adapter" not in res["methods"]
    assert res["methods"]["prototype"][1]["mean"] > 0.4 and res["methods"]["linear_probe"][1]["mean"] > 0.4


def test_shapes_colour_at_one_shot_from_a_trained_model(shapes_dir, tmp_path):
    """A briefly trained aligned model: every classifier beats chance (1/8) on colour at 1 shot."""
    import polymodal
    from polymodal.data import load_records
    from polymodal.train.loop import TrainConfig, train

    train(TrainConfig(data=str(shapes_dir), out=str(tmp_path / "m"), model="shapes-cnn-tiny", steps=30,
                      batch_size=32, eval_images=0, progress=False, hard_negatives=0))
    task = shapes_attribute_task(polymodal.load(tmp_path / "m"), load_records(shapes_dir), "colour")
    res = learning_curve(task, shots=(1,), seeds=(0, 1))
    assert res["zero_shot"] > 0.25
    for name, curve in res["methods"].items():
        assert curve[1]["mean"] > 0.25, name


def test_cli_writes_the_digits_curves(tmp_path):
    import json

    from typer.testing import CliRunner

    from polymodal.cli import app

    out = tmp_path / "curves.json"
    res = CliRunner().invoke(app, ["fewshot", "digits", "--shots", "1,4", "--seeds", "2", "--json", str(out)])
    assert res.exit_code == 0, res.output
    curve = json.loads(out.read_text())["curves"][0]["methods"]["linear_probe"]
    assert curve["4"]["mean"] > curve["1"]["mean"] > 0.3
    bad = CliRunner().invoke(app, ["fewshot", "digits", "--shots", "0"])
    assert bad.exit_code != 0 and ">= 1" in bad.output
