"""Search at scale (issue 16): the `ivf` index kind against exact search, for image-like and
text-like queries (offset from the images, as captions are by the modality gap), its save/load
through the persistent index and the CLI, the query-aware IVF candidate, and what `--kind auto`
chooses."""

import json

import numpy as np
import pytest
from search_helpers import make_collection, make_model
from typer.testing import CliRunner

from polymodal.cli import app
from polymodal.index import Index
from polymodal.index.vectors import (
    AUTO_EXACT_LIMIT,
    AUTO_IVF_LIMIT,
    BuildOptions,
    VectorIndex,
    default_nlist,
    ivf_flat,
    resolve_kind,
)

N, D, CLUSTERS = 4000, 32, 60


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def embeddings():
    """Clustered unit vectors like real image embeddings, image queries near them, and text queries
    near them plus one shared offset (the modality gap)."""
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((CLUSTERS, D))
    x = unit(centres[rng.integers(0, CLUSTERS, N)] + 0.35 * rng.standard_normal((N, D)))
    near = x[rng.permutation(N)[:100]]
    gap = 0.5 * unit(rng.standard_normal((1, D)))
    return {"base": x, "image": unit(near + 0.1 * rng.standard_normal(near.shape)),
            "text": unit(near + gap + 0.1 * rng.standard_normal(near.shape)),
            "train_text": unit(x[rng.permutation(N)[:500]] + gap)}


def recall_at_10(index: VectorIndex, x: np.ndarray, queries: np.ndarray, ids: np.ndarray) -> float:
    truth = ids[np.argsort(-(queries @ x.T), axis=1)[:, :10]]
    found = np.concatenate([index.search(q[None], 10)[1] for q in queries])  # the single-query path
    return float(np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth)]))


@pytest.mark.parametrize("queries", ["image", "text"])
def test_ivf_finds_the_true_neighbours_and_survives_save_load(embeddings, queries, tmp_path):
    x, q = embeddings["base"], embeddings[queries]
    ids = np.arange(N, dtype=np.int64) * 3 + 5  # item ids are not row numbers
    index = VectorIndex.build(x, ids, "ivf")
    assert index.kind == "ivf" and len(index) == N
    assert recall_at_10(index, x, q, ids) >= 0.95
    index.save(tmp_path / "v.faiss")
    loaded = VectorIndex.load(tmp_path / "v.faiss", "ivf")
    assert np.array_equal(loaded.search(q, 10)[1], index.search(q, 10)[1])
    # It is approximate: one list of the ~100 loses neighbours, and more lists win them back.
    loaded.set_search_params(BuildOptions(nprobe=1))
    few = recall_at_10(loaded, x, q, ids)
    assert few < 0.95 and few < recall_at_10(index, x, q, ids)


def test_query_aware_ivf_candidate_is_as_good_for_text_queries(embeddings):
    """The quantiser trained on image and caption vectors together (the measured candidate)."""
    x, ids = embeddings["base"], np.arange(N, dtype=np.int64)
    index = VectorIndex(ivf_flat(x, extra_training=embeddings["train_text"]), ids, "ivf")
    index.set_search_params(BuildOptions())
    assert index.index.nlist == default_nlist(N)
    assert recall_at_10(index, x, embeddings["text"], ids) >= 0.95


def test_auto_chooses_exact_then_ivf_then_ivfpq():
    assert resolve_kind("auto", 0) == "flat"
    assert resolve_kind("auto", AUTO_EXACT_LIMIT) == "flat"
    assert resolve_kind("auto", AUTO_EXACT_LIMIT + 1) == "ivf"
    assert resolve_kind("auto", 1_000_000) == "ivf"  # the measured 1M case
    assert resolve_kind("auto", AUTO_IVF_LIMIT + 1) == "ivfpq"
    assert resolve_kind("hnsw", 10) == "hnsw"
    with pytest.raises(ValueError, match="unknown index kind"):
        resolve_kind("roargraph", 10)


def test_auto_builds_ivf_above_the_exact_limit_in_the_persistent_index(embeddings, tmp_path, monkeypatch):
    monkeypatch.setattr("polymodal.index.vectors.AUTO_EXACT_LIMIT", N // 2)
    x = embeddings["base"]
    with Index.create(tmp_path / "idx", "test-model", "test-model", D) as idx:
        idx.write_batch(x, [f"/img/{i}.png" for i in range(N)], [None] * N, [str(i) for i in range(N)])
        assert idx.info()["kind"] == "ivf"
        first = idx.search_vectors(embeddings["text"][:5], 10)
        assert idx.vectors().kind == "ivf"
    with Index.open(tmp_path / "idx") as idx:  # loaded from vectors.faiss, not rebuilt
        assert idx.vectors().kind == "ivf"
        again = idx.search_vectors(embeddings["text"][:5], 10)
    assert [[h.path for h in hits] for hits in again] == [[h.path for h in hits] for hits in first]


def test_cli_builds_and_searches_an_ivf_index(shapes_dir, tmp_path):
    model = make_model(tmp_path / "model")
    images = make_collection(tmp_path / "images", shapes_dir, n=40)
    runner = CliRunner()
    res = runner.invoke(app, ["index", "build", str(images), "--model", str(model), "--out", str(tmp_path / "idx"),
                              "--kind", "ivf"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["index", "info", str(tmp_path / "idx"), "--json"])
    assert '"kind": "ivf"' in res.output
    probe = sorted(images.glob("test-*.png"))[3]
    res = runner.invoke(app, ["search", str(tmp_path / "idx"), "--image", str(probe), "-k", "3", "--json"])
    assert res.exit_code == 0, res.output
    hits = json.loads(res.output)
    assert len(hits) == 3 and hits[0]["path"] == str(probe.resolve())  # the image itself, first
