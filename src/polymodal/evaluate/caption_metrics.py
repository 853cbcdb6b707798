"""Reference-based caption metrics: BLEU-4, CIDEr-D and METEOR, each generated caption scored
against all the reference captions of its image (a record's `text`), aggregated over the corpus.

All three come from pycocoevalcap, the COCO caption evaluation code whose numbers captioning
papers report, so ours compare with theirs:
- BLEU-4 (Papineni et al. 2002) as COCO computes it: corpus n-gram precisions, the brevity
  penalty against each caption's closest reference length;
- CIDEr-D (Vedantam et al. 2015): tf-idf weighted n-gram cosine (n = 1..4) with clipped counts
  and a Gaussian length penalty, times 10. Its idf comes from the references of the images scored,
  so it needs a corpus: one image alone scores 0, and scores from different test sets differ;
- METEOR 1.5 (Denkowski and Lavie 2014): the Java program shipped inside pycocoevalcap (stems,
  synonyms and paraphrases; a JVM start of about 10 s), run only where `java` is on the PATH;
  otherwise it is None. nltk's METEOR is no substitute here: it needs the WordNet corpus, which
  nltk downloads at run time and these machines cannot.
Captions are tokenised as COCO's PTB tokenizer leaves such text (lower case, punctuation dropped)
by a regular expression, which spares a second Java start per call.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Sequence

from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.meteor.meteor import Meteor

METRICS = ("bleu_4", "cider_d", "meteor")
_PUNCTUATION = re.compile(r"[^\w\s]|_")


def tokenize(caption: str) -> str:
    """Lower-case words joined by single spaces, punctuation dropped: "A red circle." -> "a red circle"."""
    return " ".join(_PUNCTUATION.sub(" ", caption.lower()).split())


def meteor_available() -> bool:
    return shutil.which("java") is not None


def caption_metrics(captions: Sequence[str], references: Sequence[Sequence[str]], meteor: bool = True) -> dict:
    """{"bleu_4", "cider_d", "meteor"} of `captions` (one per image) against `references` (the
    reference captions of each image, at least one each). "meteor" is None when not asked for or
    when no Java runtime is found."""
    if len(captions) != len(references):
        raise ValueError(f"{len(captions)} captions for {len(references)} images")
    if not captions:
        raise ValueError("no captions to score")
    missing = [i for i, refs in enumerate(references) if not refs]
    if missing:
        raise ValueError(f"image {missing[0]} has no reference caption ({len(missing)} such images)")
    generated = {i: [tokenize(c)] for i, c in enumerate(captions)}
    truth = {i: [tokenize(r) for r in refs] for i, refs in enumerate(references)}
    bleu, _ = Bleu(4).compute_score(truth, generated, verbose=0)  # [BLEU-1, ..., BLEU-4]
    cider, _ = Cider().compute_score(truth, generated)
    return {"bleu_4": float(bleu[3]), "cider_d": float(cider),
            "meteor": _meteor(truth, generated) if meteor and meteor_available() else None}


def _meteor(truth: dict, generated: dict) -> float:
    scorer = Meteor()  # starts the Java process; deleting the scorer ends it
    try:
        score, _ = scorer.compute_score(truth, generated)
    finally:
        del scorer
    return float(score)
