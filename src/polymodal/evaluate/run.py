"""Evaluate an aligned model on the splits of a dataset: retrieval, zero-shot, probes."""

from __future__ import annotations

import numpy as np

from ..data.pairs import ImageTextPairs
from ..data.schema import DataError, RecordSet
from .probes import run_probes
from .retrieval import retrieval_metrics
from .zeroshot import shapes_zero_shot, zero_shot_accuracy


def caption_table(records, field: str | None = None) -> tuple[list[str], np.ndarray]:
    """All captions (or `attributes[field]` captions) flattened, with the index of their image."""
    texts, owner = [], []
    for i, r in enumerate(records):
        captions = r.attributes.get(field, []) if field else r.text
        texts += captions
        owner += [i] * len(captions)
    return texts, np.array(owner, dtype=np.int64)


def evaluate_split(model, data: RecordSet, class_names: list[str] | None = None, progress: bool = True) -> dict:
    has_text = any(r.text for r in data.records)
    pairs = ImageTextPairs(data, model.config.image.image_size, progress=progress, need_text=has_text)
    records = pairs.records
    image_emb = model.encode_image(pairs.images)  # (N, E)
    out: dict = {"n_images": len(records)}
    if has_text:
        texts, owner = caption_table(records)
        out.update(retrieval_metrics(image_emb, model.encode_text(texts), owner, records))
        out["n_captions"] = len(texts)
        rephrased, owner_r = caption_table(records, "rephrased")
        if rephrased:
            r = retrieval_metrics(image_emb, model.encode_text(rephrased), owner_r, records)["text_to_image"]
            out["rephrased_text_to_image"] = r
            out["rephrased_R@1_drop"] = out["text_to_image"]["R@1"] - r["R@1"]
    if pairs.is_shapes:
        out["zero_shot"] = shapes_zero_shot(model, image_emb, records)
        out["probes"] = run_probes(model, image_emb, records)
    elif all(r.labels is not None for r in records):
        out["zero_shot"] = zero_shot_accuracy(model, image_emb, [str(r.labels) for r in records], class_names)
    return out


def evaluate(model, data: RecordSet, splits: list[str] | None = None, max_images: int | None = None,
             class_names: list[str] | None = None, progress: bool = True) -> dict[str, dict]:
    """Metrics per split. Default splits: test and test_unseen where present, else all records."""
    available = data.splits
    if splits is None:
        splits = [s for s in ("test", "test_unseen") if s in available] or list(available)
    missing = [s for s in splits if s not in available]
    if missing:
        raise DataError(f"{data.root}: no split {', '.join(missing)} (has: {', '.join(available)})")
    results = {}
    for split in splits:
        subset = data.split(split)
        if max_images:
            subset.records = subset.records[:max_images]
        results[split] = evaluate_split(model, subset, class_names, progress)
    if "test" in results and "text_to_image" in results.get("test_unseen", {}):
        # Compare seen and unseen combinations on galleries of the same size: R@1 falls as a
        # gallery grows, so a 10,000-image test split against 1,000 unseen images would flatter.
        n = results["test_unseen"]["n_images"]
        seen = results["test"]
        if seen["n_images"] > n:
            subset = data.split("test")
            subset.records = subset.records[:n]
            seen = evaluate_split(model, subset, class_names, progress)
        results["unseen_gap"] = {"gallery": n, "seen_R@1": seen["text_to_image"]["R@1"],
                                 "unseen_R@1": results["test_unseen"]["text_to_image"]["R@1"]}
        results["unseen_gap"]["gap"] = results["unseen_gap"]["seen_R@1"] - results["unseen_gap"]["unseen_R@1"]
    return results


def summary_lines(results: dict) -> list[str]:
    """The metrics that do not fit the retrieval table, one sentence each (CLI and report)."""
    lines = []
    for split, r in results.items():
        if not isinstance(r, dict):
            continue
        t = r.get("text_to_image", {})
        if "instance_R@1_ceiling" in t:
            lines.append(f"{split}: exact-image R@1 {t['instance_R@1']:.3f} (ceiling {t['instance_R@1_ceiling']:.3f})")
        zs = r.get("zero_shot") or {}
        if zs:
            lines.append(f"{split} zero-shot accuracy: "
                         + ", ".join(f"{k} {v:.3f}" for k, v in zs.items() if isinstance(v, float)))
            if "mean_ensemble" in zs:
                lines.append(f"{split} zero-shot, mean-embedding ensemble: "
                             + ", ".join(f"{k} {v:.3f}" for k, v in zs["mean_ensemble"].items()))
        for name, p in r.get("probes", {}).items():
            lines.append(f"{split} ARO-style probe, {name.replace('_', ' ')}: {p['accuracy']:.3f} "
                         f"(n={p['n']}; e.g. \"{p['example'][0]}\" vs \"{p['example'][1]}\")")
        if "rephrased_R@1_drop" in r:
            lines.append(f"{split} captions in held-out wording: text-to-image R@1 drop {r['rephrased_R@1_drop']:.3f}")
    if "unseen_gap" in results:
        g = results["unseen_gap"]
        lines.append(f"unseen colour-shape combinations (gallery {g['gallery']}): seen R@1 {g['seen_R@1']:.3f}, "
                     f"unseen {g['unseen_R@1']:.3f}, gap {g['gap']:.3f}")
    return lines
