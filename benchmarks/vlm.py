"""Image-grounded generation targets (issue 12): the captioner beside nearest-neighbour captioning,
the chat model on ShapesWorld questions and on Sort-of-CLEVR, and the decoding speed.

    python benchmarks/vlm.py [--work runs/vlm] [--parts caption,baseline,chat,soc]
                             [--caption-steps 11000] [--chat-steps 1000,6500] [--soc-steps 1000,3000] [--reuse]

Parts (each writes WORK/PART.json; --reuse skips a part whose JSON is there):
  caption   `shapes-captioner-small` trained on the ShapesWorld train split (40,000 images), greedy
            captions of the 10,000-image test set and of test_unseen scored fact by fact against
            the scenes (precision, recall, CHAIR-i), plus BLEU-4, CIDEr-D and METEOR
  baseline  nearest-neighbour captioning: each test image gets a caption of its nearest training
            image in an aligned model's space (the composition benchmark's demo model, or one
            trained here at the demo's budget), scored the same way
  chat      `shapes-chat-minilm` (questions read by MiniLM) trained in two stages (captions, then
            conversations) on the same images with their questions (`polymodal data questions`),
            exact match on held-out wordings, unseen colour-shape pairs and follow-up turns
  soc       `shapes-chat-small` trained on Sort-of-CLEVR (stage 1 on its scene descriptions, stage 2
            on its questions), relational / non-relational exact match on its test split
Decoding speed comes from benchmarks/results/decoding_speed.json (`benchmarks/decoding_speed.py`).
Every model is defined by its steps; the JSON keeps each one's training seconds. Prints the table and
writes benchmarks/results/vlm.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from polymodal.backends import load_model
from polymodal.data import load_records
from polymodal.data.synthetic.shapes import ShapesConfig, generate as generate_shapes
from polymodal.data.synthetic.shapes_qa import write_qa_dataset
from polymodal.data.synthetic.sort_of_clevr import SortOfClevrConfig, generate as generate_soc
from polymodal.demo import DEMO_STEPS
from polymodal.evaluate.captioning import evaluate_captioner
from polymodal.evaluate.chat import evaluate_chat
from polymodal.evaluate.nn_captioning import NearestNeighbourCaptioner
from polymodal.train.captioner import CaptionTrainConfig, train_captioner
from polymodal.train.chat import ChatTrainConfig, train_chat
from polymodal.train.loop import TrainConfig, train
from polymodal.utils import write_json

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "vlm.json"
DECODING = ROOT / "benchmarks" / "results" / "decoding_speed.json"
SHAPES = ROOT / "runs" / "composition" / "data"  # the composition benchmark's data, made here if missing
CHAT_EVAL_IMAGES = 500  # per split: each image has ~30 questions and conversation turns to answer
console = Console()


def shapes_data() -> Path:
    if not (SHAPES / "manifest.jsonl").is_file():
        generate_shapes(SHAPES, ShapesConfig(n_train=40_000, n_val=1_000, n_test=10_000, n_unseen=2_000, seed=0))
    return SHAPES


def caption_part(work: Path, steps: int) -> dict:
    out, start = work / "captioner", time.perf_counter()
    trained = train_captioner(CaptionTrainConfig(data=str(shapes_data()), out=str(out), steps=steps))
    model = load_model(out)
    results = evaluate_captioner(model, load_records(shapes_data()), progress=True)
    return {"training": trained, "train_s": trained["seconds"], "part_s": time.perf_counter() - start, **results}


def aligned_model(work: Path) -> Path:
    """The aligned model whose space the baseline searches: the composition benchmark's demo model."""
    demo = ROOT / "runs" / "composition" / "demo_polymodal_model"
    if (demo / "model.safetensors").is_file():
        return demo
    out = work / "aligned"
    train(TrainConfig(data=str(shapes_data()), out=str(out), model="shapes-cnn-small", steps=DEMO_STEPS))
    return out


def baseline_part(work: Path) -> dict:
    data, model_dir = load_records(shapes_data()), aligned_model(work)
    baseline = NearestNeighbourCaptioner(load_model(model_dir), data.split("train"), progress=True)
    return {"aligned_model": str(model_dir), **evaluate_captioner(baseline, data, progress=True)}


def chat_part(work: Path, data: Path, name: str, model: str, steps: tuple[int, int]) -> dict:
    out = work / name
    trained = train_chat(ChatTrainConfig(data=str(data), out=str(out), model=model, stage1_steps=steps[0],
                                         stage2_steps=steps[1]))
    results = evaluate_chat(load_model(out), load_records(data), limit=CHAT_EVAL_IMAGES, progress=True)
    seconds = sum((trained[s] or {}).get("seconds", 0) for s in ("stage1", "stage2"))
    return {"training": trained, "train_s": seconds, **results}


def qa_data(work: Path) -> Path:
    out = work / "shapes_qa"
    if not (out / "conversations.json").is_file():
        write_qa_dataset(shapes_data(), out)
    return out


def soc_data(work: Path) -> Path:
    out = work / "sort_of_clevr"
    if not (out / "manifest.jsonl").is_file():
        generate_soc(out, SortOfClevrConfig())
    return out


def run_part(part: str, work: Path, args) -> dict:
    if part == "caption":
        return caption_part(work, args.caption_steps)
    if part == "baseline":
        return baseline_part(work)
    if part == "chat":
        return chat_part(work, qa_data(work), "chat", args.chat_model, args.chat_steps)
    if part == "soc":
        return chat_part(work, soc_data(work), "chat_soc", args.soc_model, args.soc_steps)
    raise ValueError(f"unknown part {part}")


def read(work: Path, part: str) -> dict:
    path = work / f"{part}.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def assemble(work: Path) -> dict:
    """The issue's keys (fractions 0-1) from the parts' JSON files, then the details."""
    caption, baseline, chat, soc = (read(work, p) for p in ("caption", "baseline", "chat", "soc"))
    decoding = json.loads(DECODING.read_text()) if DECODING.is_file() else {}
    test, unseen = caption.get("test", {}), caption.get("test_unseen", {})
    chat_summary, soc_summary = chat.get("summary", {}), soc.get("summary", {})
    return {
        "caption_fact_precision": test.get("fact_precision"), "caption_fact_recall": test.get("fact_recall"),
        "caption_chair_i": test.get("chair_i"), "unseen_fact_precision": unseen.get("fact_precision"),
        "caption_bleu4": test.get("bleu_4"), "caption_cider_d": test.get("cider_d"),
        "caption_meteor": test.get("meteor"),
        "baseline_bleu4": baseline.get("test", {}).get("bleu_4"),
        "baseline_cider_d": baseline.get("test", {}).get("cider_d"),
        "baseline_fact_precision": baseline.get("test", {}).get("fact_precision"),
        "baseline_fact_recall": baseline.get("test", {}).get("fact_recall"),
        "baseline_chair_i": baseline.get("test", {}).get("chair_i"),
        "baseline_unseen_fact_precision": baseline.get("test_unseen", {}).get("fact_precision"),
        "chat_exact_match_heldout": chat_summary.get("exact_match_heldout"),
        "chat_exact_match_train_wording": chat_summary.get("exact_match_train_wording"),
        "chat_exact_match_unseen": chat_summary.get("exact_match_unseen"),
        "followup_accuracy": chat_summary.get("followup_accuracy"),
        "soc_relational": soc_summary.get("relational"), "soc_nonrelational": soc_summary.get("non_relational"),
        "kv_cache_speedup": decoding.get("kv_cache_speedup"), "batch_speedup": decoding.get("batch_speedup"),
        "train_seconds": {p: d.get("train_s") for p, d in (("caption", caption), ("chat", chat), ("soc", soc)) if d},
        "parts": {"caption": caption, "baseline": baseline, "chat": chat, "soc": soc},
        "machine": {"threads": torch.get_num_threads(), "date": time.strftime("%Y-%m-%dT%H:%M:%S%z")},
    }


TARGETS = [("caption_fact_precision", ">= 0.97"), ("caption_fact_recall", ">= 0.95"), ("caption_chair_i", "<= 0.02"),
           ("unseen_fact_precision", ">= 0.90"), ("caption_bleu4", ""), ("caption_cider_d", ""),
           ("chat_exact_match_heldout", ">= 0.95"), ("chat_exact_match_unseen", ""),
           ("followup_accuracy", ">= 0.90"), ("soc_relational", ">= 0.94"), ("soc_nonrelational", ">= 0.98"),
           ("kv_cache_speedup", ">= 5"), ("batch_speedup", ">= 4")]
BASELINE = {"caption_fact_precision": "baseline_fact_precision", "caption_fact_recall": "baseline_fact_recall",
            "caption_chair_i": "baseline_chair_i", "unseen_fact_precision": "baseline_unseen_fact_precision",
            "caption_bleu4": "baseline_bleu4", "caption_cider_d": "baseline_cider_d"}


def print_table(summary: dict) -> None:
    table = Table(title="Image-grounded generation (issue 12)")
    for column in ("figure", "target", "polymodal", "nearest-neighbour baseline"):
        table.add_column(column)
    for key, target in TARGETS:
        table.add_row(key, target, _fmt(summary.get(key)), _fmt(summary.get(BASELINE.get(key, ""))))
    console.print(table)


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.3f}"


def _steps(text: str) -> tuple[int, int]:
    first, second = (int(s) for s in text.split(","))
    return first, second


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "vlm")
    ap.add_argument("--parts", default="caption,baseline,chat,soc")
    ap.add_argument("--caption-steps", type=int, default=11_000)
    ap.add_argument("--chat-steps", type=_steps, default=(1_000, 6_500), help="stage 1,stage 2")
    ap.add_argument("--soc-steps", type=_steps, default=(1_000, 3_000), help="stage 1 (scene descriptions),stage 2")
    ap.add_argument("--chat-model", default="shapes-chat-minilm", help="the chat part's preset")
    ap.add_argument("--soc-model", default="shapes-chat-small", help="the soc part's preset")
    ap.add_argument("--reuse", action="store_true", help="skip parts whose WORK/PART.json exists")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    for part in args.parts.split(","):
        if args.reuse and (args.work / f"{part}.json").is_file():
            continue
        write_json(args.work / f"{part}.json", run_part(part, args.work, args))
    summary = assemble(args.work)
    print_table(summary)
    write_json(args.out, summary)
    console.print(f"results: {args.out}")


if __name__ == "__main__":
    main()
