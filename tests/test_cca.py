"""The CCA family: planted correlations recovered, deep CCA trains, and a fitted CCA works as a
model (save/load, `polymodal.load`, the index, the CLI)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import polymodal
from polymodal.errors import CheckpointError
from polymodal.index import BuildConfig, Index, build_index
from polymodal.models.classical import CCAEstimator, DeepCCA, KernelCCA, LinearCCA, canonical_correlations
from polymodal.train.cca import CCAFitConfig, fit_cca

torch.set_num_threads(1)


def planted_linear(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Two latent signals z1, z2 seen in both views through random mixings, with noise on the
    signal coordinates: population canonical correlations 1/(1+0.5^2)=0.8 and 1/(1+1)=0.5, then 0."""
    rng = np.random.default_rng(seed)
    mix_x, mix_y = np.random.default_rng(99).standard_normal((2, 6, 6))
    z = rng.standard_normal((n, 2))
    sx = np.c_[z[:, 0] + 0.5 * rng.standard_normal(n), z[:, 1] + rng.standard_normal(n), rng.standard_normal((n, 4))]
    sy = np.c_[z[:, 0] + 0.5 * rng.standard_normal(n), z[:, 1] + rng.standard_normal(n), rng.standard_normal((n, 4))]
    return sx @ mix_x, sy @ mix_y, z


def planted_nonlinear(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Y's first coordinate is t^2 for X's first coordinate t, symmetric around 0: no linear
    function of X correlates with it, a non-linear one does almost perfectly."""
    rng = np.random.default_rng(seed)
    t = rng.uniform(-1.5, 1.5, n)
    return (np.c_[t, rng.standard_normal((n, 2))],
            np.c_[t**2 + 0.05 * rng.standard_normal(n), rng.standard_normal((n, 2))])


def test_linear_cca_recovers_a_planted_correlation():
    X, Y, z = planted_linear(4000, 0)
    cca = LinearCCA(dim=3, reg=0.0).fit(X, Y)
    Xt, Yt, zt = planted_linear(4000, 1)
    held_out = cca.score(Xt, Yt)
    assert abs(held_out[0] - 0.8) < 0.03 and abs(held_out[1] - 0.5) < 0.05 and abs(held_out[2]) < 0.1
    zx, _ = cca.transform(Xt, None)
    # The first canonical direction is the planted signal z1 itself (up to sign and noise).
    assert abs(canonical_correlations(zx[:, :1], zt[:, :1])[0]) > 0.85


def test_kernel_cca_recovers_a_nonlinear_correlation_that_linear_cca_misses():
    X, Y = planted_nonlinear(1500, 0)
    Xt, Yt = planted_nonlinear(1500, 1)
    linear = LinearCCA(dim=1, reg=0.0).fit(X, Y).score(Xt, Yt)[0]
    kernel = KernelCCA(dim=1, reg=0.01, landmarks=200).fit(X, Y).score(Xt, Yt)[0]
    assert abs(linear) < 0.15 and kernel > 0.9


def test_deep_cca_trains():
    X, Y = planted_nonlinear(1200, 0)
    Xt, Yt = planted_nonlinear(1200, 1)
    deep = DeepCCA(dim=1, out_dim=2, hidden=48, steps=150, batch_size=300, lr=2e-3, progress=False).fit(X, Y)
    start, end = np.mean(deep.history_[:5]), np.mean(deep.history_[-10:])
    assert len(deep.history_) == 150 and end > start + 0.3
    assert deep.score(Xt, Yt)[0] > 0.85


@pytest.mark.parametrize("make", [lambda: LinearCCA(2, 0.1), lambda: KernelCCA(2, 0.1, landmarks=50),
                                  lambda: DeepCCA(2, hidden=16, steps=5, batch_size=100, progress=False)],
                         ids=["linear", "kernel", "deep"])
def test_every_cca_round_trips_through_save_and_load(make, tmp_path):
    X, Y, _ = planted_linear(300, 0)
    cca = make().fit(X, Y)
    cca.save(tmp_path / "m")
    loaded = CCAEstimator.load(tmp_path / "m")
    assert type(loaded) is type(cca)
    for a, b in zip(cca.transform(X[:20], Y[:20]), loaded.transform(X[:20], Y[:20])):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(loaded.correlations_, cca.correlations_)
    assert not any(p.name.startswith(".") for p in (tmp_path / "m").iterdir())  # no staging files left


def test_bad_inputs_fail_with_one_clear_line(tmp_path):
    X, Y, _ = planted_linear(50, 0)
    with pytest.raises(ValueError, match="pair up"):
        LinearCCA(2).fit(X, Y[:40])
    with pytest.raises(ValueError, match="dim 9 is more"):
        LinearCCA(9).fit(X, Y)
    with pytest.raises(CheckpointError, match="cca.json is missing"):
        CCAEstimator.load(tmp_path)


@pytest.fixture(scope="module")
def cca_model(shapes_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("cca") / "model"
    report = fit_cca(CCAFitConfig(data=str(shapes_dir), out=str(out), dim=16, progress=False))
    return out, report


def test_a_fitted_cca_model_loads_like_any_model_and_aligns_captions(cca_model, shapes_dir):
    out, report = cca_model
    model = polymodal.load(out)
    assert model.embed_dim == 16 and report.pairs == 3000 and report.images == 600
    data = polymodal.load_dataset(shapes_dir).split("test")
    images = [shapes_dir / r.image for r in data.records[:100]]
    img = model.encode_image(images)  # (100, 16)
    txt = model.encode_text([r.text[0] for r in data.records[:100]])  # (100, 16)
    np.testing.assert_allclose(img.norm(dim=-1).numpy(), 1.0, atol=1e-5)
    np.testing.assert_allclose(img.numpy(), report.encoder.encode_image(images).numpy(), atol=1e-6)
    ranks = (txt @ img.T).argsort(dim=1, descending=True)[:, :5]
    r_at_5 = (ranks == torch.arange(100)[:, None]).any(1).float().mean().item()
    assert r_at_5 > 0.3  # chance: 0.05


def test_a_fitted_cca_model_builds_and_searches_an_index(cca_model, shapes_dir, tmp_path):
    out, _ = cca_model
    report = build_index(BuildConfig(source=str(shapes_dir / "images" / "test"), out=str(tmp_path / "idx"),
                                     model=str(out), batch_size=32, progress=False))
    assert report.added == 200
    data = polymodal.load_dataset(shapes_dir).split("test")
    model, found = polymodal.load(out), 0
    with Index.open(tmp_path / "idx") as index:
        for r in data.records[:30]:
            hits = index.search(model, text=r.text[0], k=5)
            found += any(h.path.endswith(r.image.rsplit("/", 1)[-1]) for h in hits)
    assert found >= 9  # chance: 30 x 5/200 < 1


def test_cli_fits_a_cca_and_refuses_bad_options(shapes_dir, tmp_path, monkeypatch, capsys):
    from polymodal.cli import main

    monkeypatch.setenv("COLUMNS", "400")
    monkeypatch.setattr("sys.argv", ["polymodal", "cca", "fit", str(shapes_dir), str(tmp_path / "k"), "--method",
                                     "kernel", "--image-features", "color", "--dim", "8", "--landmarks", "100",
                                     "--max-pairs", "800"])
    with pytest.raises(SystemExit) as exit_:
        main()
    assert exit_.value.code == 0
    assert "kernel CCA" in capsys.readouterr().out
    assert polymodal.load(tmp_path / "k").encode_text(["a red circle"]).shape == (1, 8)
    monkeypatch.setattr("sys.argv", ["polymodal", "cca", "fit", str(shapes_dir), str(tmp_path / "bad"),
                                     "--image-features", "sift"])
    with pytest.raises(SystemExit) as exit_:
        main()
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "unknown image features 'sift'" in err and err.count("\n") == 1
    assert not (tmp_path / "bad").exists()


def test_frozen_tower_features_are_the_models_own_embeddings(shapes_dir, tmp_path, monkeypatch):
    from polymodal.models.checkpoint import save_checkpoint
    from polymodal.models.classical.features import ImageFeatures, TextFeatures
    from polymodal.models.factory import create_model

    data = polymodal.load_dataset(shapes_dir).split("test")
    model = create_model("shapes-cnn-tiny", [t for r in data.records for t in r.text])
    save_checkpoint(model, tmp_path / "tower")
    monkeypatch.chdir(tmp_path)  # a relative path is stored resolved
    images = model.preprocess([shapes_dir / r.image for r in data.records[:8]])  # (8, 3, S, S)
    texts = [r.text[0] for r in data.records[:8]]
    after = ImageFeatures("tower:tower")
    assert after.spec == f"tower:{tmp_path / 'tower'}"
    np.testing.assert_allclose(after(images), model.encode_image(images).numpy(), atol=1e-5)
    np.testing.assert_allclose(TextFeatures("tower:tower")(texts), model.encode_text(texts).numpy(), atol=1e-5)
    before = ImageFeatures("tower-pooled:tower+color")(images)
    assert before.shape == (8, model.image_tower.output_dim + 64)
