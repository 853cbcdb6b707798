"""The VQA fusion lab: train fusion models on a VQA dataset (Sort-of-CLEVR by default), evaluate
them per question type and under missing / corrupted modalities, and write results.json,
results.md and report.html (with accuracy curves and attention maps) beside the paper's numbers."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..data.formats import load_records
from ..data.schema import DataError
from ..data.vqa import QuestionVocab, VQATensors, answer_vocabulary, vqa_tensors
from ..evaluate.vqa import CONDITIONS, accuracy_table, evaluate_vqa, majority_baseline
from ..models.fusion import FUSIONS, create_vqa_model, get_fusion_config, list_vqa_models
from ..train.vqa import VQATrainConfig, train_vqa
from ..utils import atomic_path

HELDOUT_SPLIT = "test_heldout"  # drawn by rendering variants the training data never uses
HELDOUT = "held-out rendering"  # its condition in the robustness table
MODELS = ("late", "early", "film", "xattn", "rn")
IMAGE_ONLY_BUDGET = 180.0
# Santoro et al. 2017, Sort-of-CLEVR from pixels: "above 94% for both relational and
# non-relational questions" (CNN+RN); CNN+MLP "plateauing at 63% on the relational questions".
PAPER = {"rn": {"relational": 0.94, "non-relational": 0.94, "note": "CNN + RN, > 94 % on both"},
         "late": {"relational": 0.63, "non-relational": 0.94, "note": "CNN + MLP, 63 % relational"}}


@dataclass
class LabConfig:
    data: str
    out: str = "runs/lab-vqa"
    models: list[str] = field(default_factory=lambda: ["rn"])
    time_budget: float = 300.0  # seconds of training per model
    epochs: int | None = None  # train this many epochs instead (the same model on any machine, however busy)
    modality_dropout: float = 0.0  # also train each model with this modality dropout (0: don't)
    batch_images: int = 8
    lr: float | None = None  # peak learning rate (None: each model's preset's own)
    eval_every: float = 60.0
    val_images: int = 200  # validation images evaluated during training (the accuracy curve)
    baselines: bool = True  # question-only and image-only baselines
    seed: int = 0
    device: str = "auto"
    progress: bool = True


def load_splits(cfg: LabConfig, image_size: int):
    data = load_records(cfg.data)
    train_set = data.split("train")
    if not len(train_set):
        raise DataError(f"{cfg.data}: no records in split 'train' (splits: {data.splits})")
    test_name = "test" if "test" in data.splits else None
    if test_name is None:
        raise DataError(f"{cfg.data}: no 'test' split to evaluate on (splits: {data.splits})")
    vocab = QuestionVocab.build(q.get("text", "") for r in train_set for q in r.attributes.get("questions", []))
    answers = answer_vocabulary(train_set)
    train = vqa_tensors(train_set, vocab, answers, image_size, progress=cfg.progress)
    test = vqa_tensors(data.split(test_name), vocab, answers, image_size)
    val_split = data.split("val") if "val" in data.splits else data.split(test_name)
    val = vqa_tensors(val_split, vocab, answers, image_size).subset(cfg.val_images)
    heldout = vqa_tensors(data.split(HELDOUT_SPLIT), vocab, answers, image_size) if HELDOUT_SPLIT in data.splits \
        else None
    return data, vocab, answers, train, val, test, heldout


def question_only(train: VQATensors, test: VQATensors) -> dict[str, float]:
    """The best any model can do without the image: the most common training answer of each
    exact question text."""
    flat_q, flat_a = train.questions.flatten(0, 1), train.answers.flatten()
    keys, inverse = torch.unique(flat_q, dim=0, return_inverse=True)
    best = {}
    for k in range(len(keys)):
        answers = flat_a[(inverse == k) & (flat_a >= 0)]
        if len(answers):
            best[tuple(keys[k].tolist())] = answers.mode().values.item()
    fallback = flat_a[flat_a >= 0].mode().values.item()
    preds = torch.tensor([[best.get(tuple(q.tolist()), fallback) for q in qs] for qs in test.questions])
    return accuracy_table(preds, test)


def run_lab(cfg: LabConfig) -> dict:
    from rich.console import Console

    console = Console()
    for name in cfg.models:
        if f"vqa-{name}" not in list_vqa_models():
            raise ValueError(f"unknown VQA model '{name}' (known: {', '.join(MODELS)})")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    image_size = get_fusion_config(cfg.models[0]).image_size
    data, vocab, answers, train, val, test, heldout = load_splits(cfg, image_size)
    console.print(f"{len(train)} training images ({train.questions.shape[1]} questions each), "
                  f"{len(test)} test images; answers: {', '.join(answers)}")
    if len(data.skips):
        console.print(data.skips.summary())
    results: dict = {"data": str(cfg.data), "train_images": len(train), "test_images": len(test),
                     "time_budget_s": cfg.time_budget, "models": {}, "baselines": {}, "paper": PAPER}
    results["baselines"]["majority answer per question type"] = majority_baseline(train, test)
    if cfg.baselines:
        results["baselines"]["question only"] = question_only(train, test)

    runs = [(m, 0.0) for m in cfg.models]
    if cfg.modality_dropout:
        runs += [(m, cfg.modality_dropout) for m in cfg.models]
    if cfg.baselines:
        runs.append(("image-only", 0.0))
    for name, dropout in runs:
        key = name + (f"+mdrop{dropout:g}" if dropout else "")
        fusion = "late" if name == "image-only" else name
        # The image-only baseline answers every question about an image alike: it learns what it
        # can within a few minutes, so it gets at most IMAGE_ONLY_BUDGET seconds.
        budget = min(cfg.time_budget, IMAGE_ONLY_BUDGET) if name == "image-only" else cfg.time_budget
        by_epochs = cfg.epochs is not None and name != "image-only"
        console.print(f"[bold]training {key}[/] for " + (f"{cfg.epochs} epochs" if by_epochs else f"{budget:.0f}s"))
        torch.manual_seed(cfg.seed)
        model = create_vqa_model(fusion, vocab, answers)  # the same seed: the same initial encoders
        tcfg = VQATrainConfig(out=str(out / key), time_budget=None if by_epochs else budget,
                              epochs=cfg.epochs if by_epochs else 10_000,
                              batch_images=cfg.batch_images, lr=cfg.lr or model.config.lr, image_dropout=dropout,
                              question_dropout=1.0 if name == "image-only" else dropout,
                              eval_every=cfg.eval_every, seed=cfg.seed, device=cfg.device, progress=cfg.progress)
        started = time.perf_counter()
        history = train_vqa(model, train, tcfg, evaluate=lambda m: _headline(evaluate_vqa(m, val)["clean"]))
        conditions = ("question masked",) if name == "image-only" else CONDITIONS
        entry = {"fusion": fusion, "modality_dropout": dropout, "lr": tcfg.lr, "train_seconds": history["seconds"],
                 "wall_seconds": round(time.perf_counter() - started, 1), "steps": history["steps"],
                 "questions_seen": history["questions_seen"],
                 "parameters": sum(p.numel() for p in model.parameters()), "curve": history["curve"],
                 "test": evaluate_vqa(model, test, conditions), "checkpoint": str(out / key)}
        if heldout is not None and name != "image-only":
            entry["test"][HELDOUT] = evaluate_vqa(model, heldout)["clean"]
        if name == "image-only":
            results["baselines"]["image only"] = entry["test"]["question masked"]
        results["models"][key] = entry
        acc = entry["test"][conditions[0]]
        console.print(f"{key}: relational {acc.get('relational', 0):.3f}, "
                      f"non-relational {acc.get('non-relational', 0):.3f}")
    if any(FUSIONS.get(get_fusion_config(m).fusion).has_attention for m in cfg.models):
        results["attention_examples"] = _attention_examples(results, test, out)
    write_results(results, out)
    return results


def _headline(metrics: dict) -> dict:
    return {k: metrics[k] for k in ("relational", "non-relational") if k in metrics}


def _attention_examples(results: dict, test: VQATensors, out: Path, n: int = 4) -> list[dict]:
    """Attention maps of the first attention model on a few test questions (PNGs in out/attention)."""
    import matplotlib.pyplot as plt

    from ..models.fusion import load_vqa
    from .explain import ask, attention_figure

    key = next(k for k, e in results["models"].items() if e["fusion"] == "xattn")
    model = load_vqa(results["models"][key]["checkpoint"])
    examples = []
    (out / "attention").mkdir(exist_ok=True)
    for i in range(n):
        q = 10 + i if test.questions.shape[1] > 10 + i else i  # relational questions come second
        text = test.texts[i][q]
        res = ask(model, test.images[i:i + 1], [text])
        truth = model.answers[test.answers[i, q]] if test.answers[i, q] >= 0 else "?"
        fig = attention_figure(test.images[i:i + 1], res["attention"][0],
                               f"{text}\nanswer: {res['answers'][0]} (truth: {truth})")
        path = out / "attention" / f"{key}-{test.ids[i]}-q{q}.png"
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
        plt.close(fig)
        examples.append({"image": str(path.relative_to(out)), "question": text, "answer": res["answers"][0],
                         "truth": truth})
    return examples


def pct(value) -> str:
    """A fraction as a percentage with one decimal, "-" where there is none."""
    return f"{100 * value:.1f}" if isinstance(value, float) else "-"


def markdown_tables(results: dict) -> str:
    tables = [e["test"].get("clean", e["test"].get("question masked")) for e in results["models"].values()]
    families = [f for f in ("relational", "non-relational", "ternary") if any(f in t for t in tables)]
    lines = [f"Sort-of-CLEVR test accuracy (%), {results['test_images']} test images, "
             f"{results['train_images']} training images, {results['time_budget_s']:.0f} s training per model.", "",
             "| model | " + " | ".join(families) + " | overall | training s | questions seen | paper (rel / non-rel) |",
             "| --- |" + " ---: |" * (len(families) + 3) + " --- |"]
    for (key, e), clean in zip(results["models"].items(), tables):
        paper = PAPER.get(e["fusion"]) if not e["modality_dropout"] and key in PAPER else None
        ref = f"{pct(paper['relational'])} / {pct(paper['non-relational'])}" if paper else ""
        cells = " | ".join(pct(clean.get(f)) for f in families)
        lines.append(f"| {key} | {cells} | {pct(clean['overall'])} | {e['train_seconds']:.0f} | "
                     f"{e['questions_seen']:,} | {ref} |")
    for name, b in results["baselines"].items():
        lines.append(f"| baseline: {name} | " + " | ".join(pct(b.get(f)) for f in families)
                     + f" | {pct(b['overall'])} | | | |")
    lines += robustness_table(results)
    first = next(iter(results["models"].values()))["test"]
    subtypes = sorted(k for k in first.get("clean", {}) if k.startswith("type/"))
    if subtypes:
        lines += ["", "Per question type, clean test accuracy (%):", "",
                  "| model | " + " | ".join(s[5:] for s in subtypes) + " |", "| --- |" + " ---: |" * len(subtypes)]
        for key, e in results["models"].items():
            if "clean" in e["test"]:
                lines.append(f"| {key} | " + " | ".join(pct(e["test"]["clean"].get(s)) for s in subtypes) + " |")
    return "\n".join(lines) + "\n"


def robustness_table(results: dict) -> list[str]:
    """Markdown rows: relational / non-relational accuracy of each model under every condition
    (and on the held-out rendering split where the data has one)."""
    tested = {k: e for k, e in results["models"].items() if "clean" in e["test"]}
    conditions = list(CONDITIONS) + ([HELDOUT] if any(HELDOUT in e["test"] for e in tested.values()) else [])
    lines = ["", "Accuracy (%) under missing or corrupted modalities (relational / non-relational):", "",
             "| model | " + " | ".join(conditions) + " | drop when noised |",
             "| --- |" + " ---: |" * (len(conditions) + 1)]
    for key, e in tested.items():
        cells = [f"{pct(e['test'].get(c, {}).get('relational'))} / {pct(e['test'].get(c, {}).get('non-relational'))}"
                 for c in conditions]
        drop = e["test"]["clean"]["overall"] - e["test"]["image noised"]["overall"]
        lines.append(f"| {key} | " + " | ".join(cells) + f" | {pct(drop)} |")
    return lines


def write_results(results: dict, out: Path) -> None:
    from .report import write_results_files, write_vqa_report  # matplotlib: only when a report is written

    md = markdown_tables(results)
    write_results_files(out, results, md)
    write_vqa_report(results, md, out / "report.html")
