import json

import pytest

from polymodal.data.synthetic.shapes import ShapesConfig, generate
from polymodal.lab.paradigms import ParadigmsConfig, run_paradigms


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    out = tmp_path_factory.mktemp("shapes")
    generate(out, ShapesConfig(n_train=400, n_val=20, n_test=80, n_unseen=80, seed=5), workers=1, progress=False)
    return out


def test_lab_puts_the_cca_family_and_federated_runs_in_one_table(shapes, tmp_path):
    cfg = ParadigmsConfig(out=str(tmp_path / "lab"), data=str(shapes), eval_images=80, fed_rounds=2,
                          fed_local_steps=2, cca_deep_steps=30, sections=["cca", "federated"], progress=False)
    results = run_paradigms(cfg)
    rows = {r["method"]: r for r in results["alignment"]}
    assert {r["family"] for r in rows.values()} == {"CCA", "federated"}
    linear = rows["linear CCA (HOG + colour / TF-IDF)"]
    # 80 test images: chance R@1 is about 1/80; a fitted CCA finds the caption's image far more often
    assert linear["t2i_R@1"] > 5 / 80 and linear["i2t_R@1"] > 5 / 80
    assert 0 <= linear["unseen_t2i_R@1"] <= 1
    assert results["federated"]["runs"]["FedAvg"]["rounds"][-1]["round"] == 2
    assert results["federated"]["fedavg_ratio"] >= 0
    saved = json.loads((tmp_path / "lab" / "results.json").read_text())
    assert saved["lab_minutes"] == results["lab_minutes"]
    markdown = (tmp_path / "lab" / "results.md").read_text()
    assert "linear CCA" in markdown and "FedAvg (2 rounds)" in markdown
    page = (tmp_path / "lab" / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 2  # R@1 bars and federated rounds


def test_lab_refuses_an_unknown_section(tmp_path):
    with pytest.raises(ValueError, match="unknown lab sections: teleport"):
        run_paradigms(ParadigmsConfig(out=str(tmp_path), sections=["teleport"]))
