"""The chat model scored by exact match (`caption_facts.score_answers`: case, articles, number
words and listed objects' order normalised) on a dataset's evaluation splits:

- single-turn questions (`attributes["questions"]`), per family and per wording (train wordings,
  the held-out ones), on `test` (seen colour-shape pairs) and `test_unseen` (held-out pairs);
- conversations (`attributes["conversations"]`, `["conversations_heldout"]`), each turn answered
  with the conversation so far and the TRUE earlier answers, so a follow-up ("and what is above
  it?") is scored on whether it uses the previous turn, not on earlier mistakes;
- Sort-of-CLEVR questions as the fusion lab scores its classifiers: accuracy on relational and on
  non-relational questions.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..data.formats.llava import llava_to_messages
from ..data.pairs import ImageTextPairs
from ..data.schema import Record, RecordSet
from .caption_facts import answers_match, score_answers

EVAL_SPLITS = ("test", "test_unseen")
CONVERSATION_KEYS = {"conversations": "train", "conversations_heldout": "heldout"}


def question_items(records: Sequence[Record]) -> list[tuple[int, list[dict], dict]]:
    """(image index, messages, question) for every single-turn question."""
    return [(i, [{"role": "user", "content": q["text"]}], q)
            for i, r in enumerate(records) for q in r.attributes.get("questions") or []]


def conversation_items(records: Sequence[Record]) -> list[tuple[int, list[dict], dict]]:
    """(image index, the talk up to turn k with the true earlier answers, turn k's question) for
    every assistant turn of every conversation."""
    items = []
    for i, r in enumerate(records):
        for key, wording in CONVERSATION_KEYS.items():
            turns = r.attributes.get(key) or []
            messages = llava_to_messages(turns)
            for k in range(1, len(turns), 2):
                gpt = turns[k]
                question = {"answer": gpt["value"], "family": gpt.get("family", "unknown"), "wording": wording,
                            "followup": bool(gpt.get("followup", k > 1))}
                items.append((i, messages[:k], question))
    return items


def answer_items(model, images: torch.Tensor, items, batch_size: int = 64) -> list[str]:
    if not items:
        return []
    return model.reply(images[[i for i, _, _ in items]], [m for _, m, _ in items], batch_size=batch_size)


def relational_scores(questions: Sequence[dict], predictions: Sequence[str]) -> dict:
    """Sort-of-CLEVR style: accuracy on relational and on non-relational questions."""
    out = {}
    for name, flag in (("relational", True), ("non_relational", False)):
        hits = [answers_match(p, q["answer"]) for q, p in zip(questions, predictions)
                if bool(q.get("relational")) == flag]
        out[name] = sum(hits) / len(hits) if hits else None
    return out


def evaluate_split(model, data: RecordSet, split: str, limit: int | None = None, progress: bool = False) -> dict | None:
    records = [r for r in data.split(split).records if r.image][:limit]
    records = [r for r in records if r.attributes.get("questions") or r.attributes.get("conversations")]
    if not records:
        return None
    pairs = ImageTextPairs(RecordSet(data.root, records, data.skips), model.config.image.image_size,
                           progress=progress, need_text=False)
    out: dict = {"images": len(pairs)}
    questions = question_items(pairs.records)
    if questions:
        predictions = answer_items(model, pairs.images, questions)
        qs = [q for _, _, q in questions]
        out["questions"] = score_answers(qs, predictions) | relational_scores(qs, predictions)
    talks = conversation_items(pairs.records)
    if talks:
        out["conversations"] = score_answers([q for _, _, q in talks], answer_items(model, pairs.images, talks))
    return out


def summary(splits: dict) -> dict:
    """The headline figures: held-out wordings and follow-ups on `test`, unseen pairs on
    `test_unseen`, relational / non-relational over the test split's questions."""
    test, unseen = splits.get("test") or {}, splits.get("test_unseen") or {}
    wording = (test.get("questions") or {}).get("by_wording", {})
    heldout = [v for k, v in wording.items() if k.startswith("heldout") and v is not None]
    return {
        "exact_match_train_wording": wording.get("train"),
        "exact_match_heldout": min(heldout) if heldout else None,  # the weaker held-out wording
        "exact_match_by_wording": wording,
        "followup_accuracy": (test.get("conversations") or {}).get("followup"),
        "exact_match_unseen": (unseen.get("questions") or {}).get("exact_match"),
        "relational": (test.get("questions") or {}).get("relational"),
        "non_relational": (test.get("questions") or {}).get("non_relational"),
    }


def evaluate_chat(model, data: RecordSet, splits: Sequence[str] = EVAL_SPLITS, limit: int | None = None,
                  progress: bool = False) -> dict:
    """{"splits": {split: {"questions": ..., "conversations": ...}}, "summary": {...}}."""
    scored = {s: evaluate_split(model, data, s, limit, progress) for s in splits if data.split(s).records}
    scored = {s: v for s, v in scored.items() if v is not None}
    return {"splits": scored, "summary": summary(scored)}
