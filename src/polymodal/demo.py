"""`polymodal demo`: generate ShapesWorld, train, evaluate, write runs/demo/report.html."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import torch
from PIL import Image
from rich.console import Console

from .data.formats import load_records
from .data.pairs import ImageTextPairs
from .data.synthetic import shapes
from .evaluate import evaluate
from .evaluate.probes import caption_scores, probe_pairs
from .evaluate.report import loss_curve, png_b64, similarity_heatmap, write_report
from .evaluate.run import print_results
from .models.checkpoint import load_checkpoint
from .train.loop import TrainConfig, train
from .utils import write_json

console = Console()

# Training length of the demo, in optimizer steps of 128 pairs: about 3 minutes on 2 idle cores.
DEMO_STEPS = 900

# The report's search queries: the first scene of each size (1, 2, 3 objects) in the test split
# and in test_unseen, so that every query has at least one true match in the searched gallery.
QUERY_SIZES = (1, 2, 3)


def demo_queries(records: list) -> list[dict]:
    """One query scene (objects and relations) per split and scene size, from `records`."""
    picked: dict[tuple[str, int], dict] = {}
    for r in records:
        key = (r.split, len(r.attributes["objects"]))
        if key[1] in QUERY_SIZES and key not in picked:
            picked[key] = {"objects": r.attributes["objects"], "relations": r.attributes["relations"]}
    return [picked[key] for key in sorted(picked, key=lambda k: (k[0] != "test", k[1]))]


def search_results(model, records: list, images: torch.Tensor, image_emb: torch.Tensor, k: int = 8) -> list[dict]:
    """Top-k images for each demo query among `images` (N, 3, S, S), marked hit or miss."""
    unseen = {tuple(c) for c in shapes.UNSEEN_COMBOS}
    out = []
    for described in demo_queries(records):
        text = shapes.describe(described["objects"], described["relations"], random.Random(0))
        scores = (image_emb @ model.encode_text([text]).T).squeeze(1)  # (N,)
        matches = sum(shapes.satisfies(r.attributes, described) for r in records)
        top = scores.topk(k)
        results = []
        for score, idx in zip(top.values.tolist(), top.indices.tolist()):
            hit = shapes.satisfies(records[idx].attributes, described)
            img = Image.fromarray(images[idx].permute(1, 2, 0).numpy())
            results.append({"png": png_b64(img), "score": score, "cls": "hit" if hit else "miss"})
        out.append({"text": text, "results": results, "matches": matches,
                    "unseen": any((o["colour"], o["shape"]) in unseen for o in described["objects"])})
    return out


def probe_examples(model, pairs: ImageTextPairs, image_emb: torch.Tensor, per_family: int = 2) -> list[dict]:
    """The first `per_family` probe pairs of every family, with the model's score for each caption."""
    rows = []
    for family in pairs.kind.probe_families:
        idx, true, false = probe_pairs(pairs.records[:200], family, pairs.kind)
        idx, true, false = idx[:per_family], true[:per_family], false[:per_family]
        if not idx:
            continue
        s_true = caption_scores(model, image_emb[idx], true).tolist()
        s_false = caption_scores(model, image_emb[idx], false).tolist()
        for i, t, f, st, sf in zip(idx, true, false, s_true, s_false):
            img = Image.fromarray(pairs.images[i].permute(1, 2, 0).numpy())
            rows.append({"family": family.replace("_", " "), "png": png_b64(img), "true": t, "true_score": st,
                         "false": f, "false_score": sf, "cls": "hit" if st > sf else "miss"})
    return rows


def heatmap_figure(model, pairs: ImageTextPairs, n: int = 8):
    """n test images against their own first captions: the diagonal should light up."""
    idx = list(range(n))
    captions = [pairs.records[i].text[0] for i in idx]
    sims = model.encode_image(pairs.images[idx]) @ model.encode_text(captions).T  # (n, n)
    thumbs = [Image.fromarray(pairs.images[i].permute(1, 2, 0).numpy()).resize((96, 96), Image.NEAREST) for i in idx]
    return similarity_heatmap(sims, captions, thumbs)


def run_demo(out: Path, n_train: int = 40000, n_test: int = 10000, steps: int = DEMO_STEPS,
             model: str = "shapes-cnn-small", seed: int = 0) -> Path:
    """Generate (or reuse) ShapesWorld, train for a fixed number of steps, evaluate, write the report.
    Steps, not seconds: a slower or busier machine takes longer but shows the same model."""
    out = Path(out)
    data_dir, model_dir = out / "data", out / "model"
    t0 = time.perf_counter()
    cfg = shapes.ShapesConfig(n_train=n_train, n_val=min(1000, n_test), n_test=n_test, n_unseen=min(2000, n_test),
                              seed=seed)
    meta_path = data_dir / "dataset.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    if (meta.get("n_train"), meta.get("n_test"), meta.get("seed")) == (n_train, n_test, seed):
        console.print(f"reusing {data_dir}")
    else:
        console.rule("1. generate ShapesWorld")
        shapes.generate(data_dir, cfg)
    console.rule("2. train")
    t_train = time.perf_counter()
    train(TrainConfig(data=str(data_dir), out=str(model_dir), model=model, steps=steps, seed=seed, eval_images=500))
    train_s = time.perf_counter() - t_train
    console.rule("3. evaluate")
    trained = load_checkpoint(model_dir)
    data = load_records(data_dir)
    embeddings: dict = {}
    results = evaluate(trained, data, embeddings=embeddings)
    write_json(out / "metrics.json", results)
    print_results(results)
    console.rule("4. report")
    test, image_emb = embeddings["test"].pairs, embeddings["test"].image_emb
    # Search test and test_unseen together, so the unseen combinations have something to find.
    gallery = [embeddings[s] for s in ("test", "test_unseen") if s in embeddings]
    records = [r for g in gallery for r in g.records]
    images = torch.cat([g.pairs.images for g in gallery])  # (N, 3, S, S)
    queries = search_results(trained, records, images, torch.cat([g.image_emb for g in gallery]))
    figures = [{"title": "Similarity of test images and captions", "png": png_b64(heatmap_figure(trained, test))},
               {"title": "Training", "png": png_b64(loss_curve(model_dir / "metrics.csv"))}]
    subtitle = (f"model {model}, {n_train:,} training images, {steps:,} steps of {TrainConfig.batch_size} "
                f"(training took {train_s:.0f} s); test gallery {len(test):,} images "
                f"(searched with test_unseen: {sum(len(g.records) for g in gallery):,}); "
                f"whole run {time.perf_counter() - t0:.0f} s")
    return write_report(out / "report.html", "polymodal demo: ShapesWorld", subtitle, results,
                        queries, figures, probe_examples(trained, test, image_emb))
