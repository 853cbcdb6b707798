"""Visual question answering data as tensors: every image decoded once, with all its questions.

A VQA record is an ordinary record whose `attributes.questions` is a list of
`{"text", "answer", ...}` (optionally `family` or `relational`, and `subtype`, used to break accuracy
down).
Keeping the questions of one image together lets a model encode each image once and answer all
of them from that encoding.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from ..modalities.image_files import load_image
from .schema import DataError, RecordSet, UnreadableFileError

PAD, UNK, MASK = "<pad>", "<unk>", "<mask>"
_WORD = re.compile(r"[a-z0-9]+|[^\sa-z0-9]")


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


class QuestionVocab:
    """Word-level vocabulary of the questions (a closed, small vocabulary; no subwords needed)."""

    def __init__(self, tokens: list[str], length: int):
        self.tokens = tokens
        self.index = {t: i for i, t in enumerate(tokens)}
        self.length = length  # questions are padded / cut to this many tokens

    @classmethod
    def build(cls, texts, extra_length: int = 2) -> QuestionVocab:
        seen, longest = set(), 1
        for t in texts:
            w = words(t)
            seen.update(w)
            longest = max(longest, len(w))
        return cls([PAD, UNK, MASK, *sorted(seen)], longest + extra_length)

    def __call__(self, texts: list[str]) -> torch.Tensor:
        """(N, L) token ids, 0-padded."""
        ids = torch.zeros(len(texts), self.length, dtype=torch.long)
        for i, t in enumerate(texts):
            row = [self.index.get(w, 1) for w in words(t)][: self.length]
            ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        return ids

    def to_dict(self) -> dict:
        return {"tokens": self.tokens, "length": self.length}

    @classmethod
    def from_dict(cls, d: dict) -> QuestionVocab:
        return cls(list(d["tokens"]), int(d["length"]))


FAMILY_NAMES = ("non-relational", "relational", "ternary")


def question_family(question: dict) -> str:
    """A question's family: its "family" field where it has one (Sort-of-CLEVR's three), else
    relational or non-relational by its "relational" flag."""
    family = question.get("family")
    if family in FAMILY_NAMES:
        return family
    return "relational" if question.get("relational", False) else "non-relational"


@dataclass
class VQATensors:
    """All of one split in memory."""

    images: torch.Tensor  # (N, 3, H, W) uint8
    questions: torch.Tensor  # (N, Q, L) token ids
    answers: torch.Tensor  # (N, Q) answer ids (-1: answer not in the vocabulary)
    families: torch.Tensor  # (N, Q) index into `family_names`
    family_names: list[str]  # "non-relational", "relational", and "ternary" where the data has it
    subtypes: torch.Tensor  # (N, Q) index into `subtype_names`
    subtype_names: list[str]
    texts: list[list[str]]  # the question texts, for reports
    ids: list[str]  # record ids

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, n: int) -> VQATensors:
        return VQATensors(self.images[:n], self.questions[:n], self.answers[:n], self.families[:n],
                          self.family_names, self.subtypes[:n], self.subtype_names, self.texts[:n], self.ids[:n])


def vqa_records(data: RecordSet) -> list:
    """The records that carry questions (every other record is skipped and logged)."""
    kept = []
    for rec in data.records:
        qs = rec.attributes.get("questions")
        if not rec.image or not qs or not all(isinstance(q, dict) and "text" in q and "answer" in q for q in qs):
            data.skips.skip(f"record {rec.id}", "no image or no questions with text and answer")
            continue
        kept.append(rec)
    return kept


def vqa_tensors(data: RecordSet, vocab: QuestionVocab, answers: list[str], image_size: int,
             progress: bool = False) -> VQATensors:
    """Decode every image of `data` once; tokenise its questions. Images of another size are resized."""
    from ..utils import progress_bar

    records = vqa_records(data)
    if not records:
        raise DataError(f"{data.root}: no records with an image and attributes.questions in this split")
    n_q = max(len(r.attributes["questions"]) for r in records)
    answer_id = {a: i for i, a in enumerate(answers)}
    subtype_names = sorted({str(q.get("subtype", "all")) for r in records for q in r.attributes["questions"]})
    sub_id = {s: i for i, s in enumerate(subtype_names)}
    images = np.zeros((len(records), image_size, image_size, 3), dtype=np.uint8)
    questions = torch.zeros(len(records), n_q, vocab.length, dtype=torch.long)
    ans = torch.full((len(records), n_q), -1, dtype=torch.long)
    families = torch.zeros(len(records), n_q, dtype=torch.long)
    subtypes = torch.zeros(len(records), n_q, dtype=torch.long)
    kept, texts = [], []
    with progress_bar(progress) as bar:
        task = bar.add_task("decoding images", total=len(records))
        for rec in records:
            try:
                images[len(kept)] = _square_image(data.path(rec.image), image_size)
            except UnreadableFileError as err:
                data.skips.skip(str(data.path(rec.image)), err.reason)
                bar.advance(task)
                continue
            i = len(kept)
            qs = rec.attributes["questions"]
            questions[i, : len(qs)] = vocab([q["text"] for q in qs])
            for j, q in enumerate(qs):
                ans[i, j] = answer_id.get(str(q["answer"]), -1)
                families[i, j] = FAMILY_NAMES.index(question_family(q))
                subtypes[i, j] = sub_id[str(q.get("subtype", "all"))]
            kept.append(rec.id)
            texts.append([q["text"] for q in qs])
            bar.advance(task)
    n = len(kept)
    if not n:
        raise DataError(f"{data.root}: none of the images could be read")
    return VQATensors(torch.from_numpy(images[:n]).permute(0, 3, 1, 2).contiguous(), questions[:n], ans[:n],
                      families[:n], list(FAMILY_NAMES), subtypes[:n], subtype_names, texts, kept)


def _square_image(path, size: int) -> np.ndarray:
    """(size, size, 3) uint8, stretched (not cropped) as the VQA models were trained."""
    im = load_image(path)
    if im.size != (size, size):
        im = im.resize((size, size), Image.BILINEAR)
    return np.asarray(im)


def answer_vocabulary(data: RecordSet) -> list[str]:
    """The answers seen in `data`, in a stable order (Sort-of-CLEVR's own order when it is that)."""
    from .synthetic.sort_of_clevr import ANSWERS

    seen = {str(q["answer"]) for r in vqa_records(data) for q in r.attributes["questions"]}
    if seen <= set(ANSWERS):
        return list(ANSWERS)
    return sorted(seen)
