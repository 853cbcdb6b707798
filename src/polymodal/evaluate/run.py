"""Evaluate a model on the splits of a dataset. An aligned model: retrieval for every dataset, and
what the dataset's kind adds (ShapesWorld: attribute zero-shot and compositional probes). A
captioner: its captions' facts and reference metrics (`captioning.evaluate_captioner`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..data.pairs import ImageTextPairs
from ..data.schema import DataError, RecordSet
from .captioning import CAPTION_COLUMNS, EVAL_SPLITS, caption_rows, evaluate_captioner
from .probes import run_probes, run_winoground
from .retrieval import retrieval_metrics
from .zeroshot import attribute_zero_shot, zero_shot_accuracy


def caption_table(records, field: str | None = None) -> tuple[list[str], np.ndarray]:
    """All captions (or `attributes[field]` captions) flattened, with the index of their image."""
    texts, owner = [], []
    for i, r in enumerate(records):
        captions = r.attributes.get(field, []) if field else r.text
        texts += captions
        owner += [i] * len(captions)
    return texts, np.array(owner, dtype=np.int64)


@dataclass
class SplitEmbeddings:
    """One split, decoded and embedded once, for every metric (and the demo's report) to share."""

    pairs: ImageTextPairs
    image_emb: torch.Tensor  # (N, E)
    texts: list[str]
    owner: np.ndarray  # (C,) image index of each caption
    text_emb: torch.Tensor | None  # (C, E), None for unlabelled-by-text data

    @property
    def records(self):
        return self.pairs.records

    @property
    def kind(self):
        return self.pairs.kind


def embed_split(model, data: RecordSet, progress: bool = True) -> SplitEmbeddings:
    has_text = any(r.text for r in data.records)
    pairs = ImageTextPairs(data, model.config.image.image_size, progress=progress, need_text=has_text)
    texts, owner = caption_table(pairs.records)
    return SplitEmbeddings(pairs, model.encode_image(pairs.images), texts, owner,
                           model.encode_text(texts) if texts else None)


def evaluate_split(model, split: RecordSet | SplitEmbeddings, class_names: list[str] | None = None,
                   progress: bool = True) -> dict:
    emb = split if isinstance(split, SplitEmbeddings) else embed_split(model, split, progress)
    out: dict = {"n_images": len(emb.records)}
    if emb.text_emb is not None:
        out.update(_retrieval(model, emb))
    out.update(_kind_metrics(model, emb, class_names))
    return out


def _retrieval(model, emb: SplitEmbeddings) -> dict:
    """Retrieval with the split's captions, and with its held-out-wording captions
    (`attributes.rephrased`) where the records carry them."""
    out = retrieval_metrics(emb.image_emb, emb.text_emb, emb.owner, emb.records, emb.kind)
    out["n_captions"] = len(emb.texts)
    rephrased, owner_r = caption_table(emb.records, "rephrased")
    if rephrased:
        r = retrieval_metrics(emb.image_emb, model.encode_text(rephrased), owner_r, emb.records,
                              emb.kind)["text_to_image"]
        out["rephrased_text_to_image"] = r
        out["rephrased_R@1_drop"] = out["text_to_image"]["R@1"] - r["R@1"]
    return out


def _kind_metrics(model, emb: SplitEmbeddings, class_names: list[str] | None) -> dict:
    """Zero-shot and probes as the dataset kind defines them; zero-shot on `labels` otherwise."""
    kind, records, out = emb.kind, emb.records, {}
    task = kind.attribute_task(records)
    if task is not None:
        out["zero_shot"] = attribute_zero_shot(model, emb.image_emb, task)
    elif all(r.labels is not None for r in records):
        out["zero_shot"] = zero_shot_accuracy(model, emb.image_emb, [str(r.labels) for r in records], class_names)
    if kind.probe_families:
        out["probes"] = run_probes(model, emb.image_emb, records, kind)
    if kind.winoground_kinds:
        out["winoground"] = run_winoground(model, records, dataset_kind=kind)
    return out


def checked_splits(data: RecordSet, splits: list[str] | None) -> list[str]:
    """`splits`, each present in `data`; by default test and test_unseen where present, else all."""
    available = data.splits
    if not splits:
        splits = [s for s in EVAL_SPLITS if s in available] or list(available)
    missing = [s for s in splits if s not in available]
    if missing:
        raise DataError(f"{data.root}: no split {', '.join(missing)} (has: {', '.join(available)})")
    return splits


def evaluate_model(model, data: RecordSet, splits: list[str] | None = None, max_images: int | None = None,
                   class_names: list[str] | None = None, progress: bool = True,
                   captioned: dict | None = None) -> dict[str, dict]:
    """What `polymodal eval` runs: `evaluate_captioner` for a captioner (a model with `caption`;
    pass a dict as `captioned` to get each split's captions back), `evaluate` for an aligned model."""
    if not hasattr(model, "caption"):
        return evaluate(model, data, splits, max_images, class_names, progress)
    splits = checked_splits(data, splits)
    results = evaluate_captioner(model, data, splits, max_images, progress, captioned=captioned)
    if not results:
        raise DataError(f"{data.root}: no images with a scene or reference captions in {', '.join(splits)}")
    return results


def evaluate(model, data: RecordSet, splits: list[str] | None = None, max_images: int | None = None,
             class_names: list[str] | None = None, progress: bool = True,
             embeddings: dict[str, SplitEmbeddings] | None = None) -> dict[str, dict]:
    """Metrics per split. Default splits: test and test_unseen where present, else all records.
    Pass a dict as `embeddings` to get each split's SplitEmbeddings back."""
    splits = checked_splits(data, splits)
    embeddings = {} if embeddings is None else embeddings
    results = {}
    for split in splits:
        subset = data.split(split)
        if max_images:
            subset.records = subset.records[:max_images]
        embeddings[split] = embed_split(model, subset, progress)
        results[split] = evaluate_split(model, embeddings[split], class_names, progress)
    if "test" in results and "text_to_image" in results.get("test_unseen", {}):
        # Compare seen and unseen combinations on galleries of the same size: R@1 falls as a
        # gallery grows, so a 10,000-image test split against 2,000 unseen images would flatter.
        n = results["test_unseen"]["n_images"]
        test = embeddings["test"]
        keep = test.owner < n  # the captions of the first n test images
        seen = retrieval_metrics(test.image_emb[:n], test.text_emb[keep], test.owner[keep], test.records[:n], test.kind)
        unseen = results["test_unseen"]["text_to_image"]["R@1"]
        results["unseen_gap"] = {"gallery": n, "seen_R@1": seen["text_to_image"]["R@1"], "unseen_R@1": unseen,
                                 "gap": seen["text_to_image"]["R@1"] - unseen}
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
            lines.append(f"{split} probe, {name.replace('_', ' ')}: {p['accuracy']:.3f} "
                         f"(n={p['n']}; e.g. \"{p['example'][0]}\" vs \"{p['example'][1]}\")")
        wino = r.get("winoground") or {}
        if "group" in wino:
            lines.append(f"{split} Winoground-style group score: {wino['group']:.3f} ("
                         + ", ".join(f"{k.replace('_', ' ')}: text {v['text']:.3f}, image {v['image']:.3f}, "
                                     f"group {v['group']:.3f}" for k, v in wino.items() if isinstance(v, dict)) + ")")
        if "rephrased_R@1_drop" in r:
            lines.append(f"{split} captions in held-out wording: text-to-image R@1 drop {r['rephrased_R@1_drop']:.3f}")
    if "unseen_gap" in results:
        g = results["unseen_gap"]
        lines.append(f"unseen colour-shape combinations (gallery {g['gallery']}): seen R@1 {g['seen_R@1']:.3f}, "
                     f"unseen {g['unseen_R@1']:.3f}, gap {g['gap']:.3f}")
    return lines


def print_results(results: dict) -> None:
    """The retrieval table (the caption table for a captioner), then one line per other metric."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title="evaluation")
    for col in ("split", "images", "t2i R@1", "R@5", "R@10", "medR", "i2t R@1", "R@5", "R@10", "medR"):
        table.add_column(col, justify="right")
    for split, r in results.items():
        if not isinstance(r, dict) or "text_to_image" not in r:
            continue
        t, i = r["text_to_image"], r["image_to_text"]
        table.add_row(split, str(r["n_images"]),
                      *(f"{t[k]:.3f}" for k in ("R@1", "R@5", "R@10")), f"{t['median_rank']:.0f}",
                      *(f"{i[k]:.3f}" for k in ("R@1", "R@5", "R@10")), f"{i['median_rank']:.0f}")
    if any("text_to_image" in r for r in results.values() if isinstance(r, dict)):
        console.print(table)
    rows = caption_rows(results)
    if rows:
        captions = Table(title="captions")
        for col in ("split", "captions", *CAPTION_COLUMNS, "unparsed spans"):
            captions.add_column(col, justify="right")
        for row in rows:
            captions.add_row(*row)
        console.print(captions)
    for line in summary_lines(results):
        console.print(line, highlight=False)
