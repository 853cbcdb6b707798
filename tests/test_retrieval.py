import numpy as np
import torch

from polymodal.data import Record
from polymodal.evaluate.retrieval import first_hit_ranks, relevance, retrieval_metrics, summarize


def test_first_hit_rank_by_hand():
    sim = torch.tensor([[0.9, 0.1, 0.5, 0.3],   # relevant {2}: 0.9 beats it -> rank 2
                        [0.2, 0.8, 0.1, 0.0],   # relevant {1}: rank 1
                        [0.4, 0.3, 0.2, 0.1]])  # relevant {2, 3}: best 0.2, two above -> rank 3
    # queries @ identity gallery = the score matrix itself; chunk=2 exercises the chunking.
    (ranks,) = first_hit_ranks(sim, torch.eye(4), [np.array([2]), np.array([1]), np.array([2, 3])], chunk=2)
    assert ranks.tolist() == [2, 1, 3]
    m = summarize(ranks, ks=(1, 2))
    assert m["R@1"] == 1 / 3 and m["R@2"] == 2 / 3 and m["median_rank"] == 2


def test_any_caption_of_an_image_counts_as_a_hit():
    # Two images; image 0 has captions 0 and 1, image 1 has caption 2.
    img = torch.eye(2)
    txt = torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    recs = [Record(id="a", text=["x", "y"]), Record(id="b", text=["z"])]
    m = retrieval_metrics(img, txt, np.array([0, 0, 1]), recs)
    # image 0: caption 1 is its own and ranks first -> hit; image 1: caption 2 (or 0) -> hit.
    assert m["image_to_text"]["R@1"] == 1.0
    # captions: 0 prefers image 1 (miss), 1 -> image 0 (hit), 2 -> image 1 (hit)
    assert abs(m["text_to_image"]["R@1"] - 2 / 3) < 1e-9


def _scene(objs, rels):
    return {"objects": [{"size": s, "colour": c, "shape": sh, "x": x, "y": y} for s, c, sh, x, y in objs],
            "relations": rels}


def test_shapes_relevance_follows_the_facts():
    a = _scene([("small", "red", "circle", 10, 30), ("large", "blue", "square", 50, 30)], [[0, "left of", 1]])
    b = _scene([("large", "blue", "square", 12, 30), ("small", "red", "circle", 52, 28)], [[0, "left of", 1]])
    c = _scene([("small", "red", "circle", 8, 32), ("large", "blue", "square", 40, 34)], [[0, "left of", 1]])
    recs = [Record(id=str(i), text=["t"], attributes=s) for i, s in enumerate((a, b, c))]
    images_for_caption, _ = relevance(recs, np.array([0, 1, 2]))
    assert sorted(images_for_caption[0].tolist()) == [0, 2]  # c shows the same scene as a; b is mirrored
    assert images_for_caption[1].tolist() == [1]
