"""Word error rate of transcripts against reference captions, with jiwer.

Both sides go through the same normalisation first (lower case, hyphens and slashes to spaces,
punctuation removed, whitespace collapsed), so that "A red circle." and "a red circle" agree:
a recogniser is scored on the words, not on the casing and punctuation that Whisper writes and
pocketsphinx does not. jiwer is imported inside the functions: `polymodal --help` stays fast.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class WordErrors:
    """Corpus figures: `wer` = (substitutions + deletions + insertions) / reference_words, the
    standard corpus WER (not the mean of `per_utterance`, which short captions would dominate)."""

    wer: float
    substitutions: int
    deletions: int
    insertions: int
    reference_words: int
    per_utterance: list[float] = field(default_factory=list)  # each utterance's own WER, in order

    def to_dict(self) -> dict:
        return asdict(self)


def _transform():
    """jiwer's transform chain for one side: text -> lists of words."""
    import jiwer

    return jiwer.Compose([*_text_steps(), jiwer.ReduceToListOfListOfWords()])


def _text_steps() -> list:
    import jiwer

    return [
        jiwer.ToLowerCase(),
        jiwer.SubstituteRegexes({r"[-\u2010-\u2015/]": " "}),  # "left-hand" is two words, not "lefthand"
        jiwer.RemovePunctuation(),
        jiwer.RemoveMultipleSpaces(),
        jiwer.Strip(),
    ]


def normalise_text(text: str) -> str:
    """The text as WER compares it: 'The RED circle, left-of...' -> 'the red circle left of'."""
    import jiwer

    return jiwer.Compose(_text_steps())(text)


def word_error_rate(references: Sequence[str], hypotheses: Sequence[str]) -> WordErrors:
    """Corpus WER of `hypotheses` against `references` (one string per utterance, same order),
    with each utterance's own WER beside it. An utterance whose reference normalises to nothing
    counts its hypothesis words as insertions."""
    import jiwer

    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses")
    if not references:
        raise ValueError("no utterances to score")
    transform = _transform()
    out = jiwer.process_words(list(references), list(hypotheses), reference_transform=transform,
                              hypothesis_transform=transform)
    per_utterance = [_one(ref, hyp) for ref, hyp in zip(out.references, out.hypotheses)]
    errors = out.substitutions + out.deletions + out.insertions
    words = sum(len(ref) for ref in out.references)
    return WordErrors(wer=errors / words if words else float(errors > 0), substitutions=out.substitutions,
                      deletions=out.deletions, insertions=out.insertions, reference_words=words,
                      per_utterance=per_utterance)


def wer(reference: str, hypothesis: str) -> float:
    """One utterance's WER (0 when the words agree after normalisation)."""
    return word_error_rate([reference], [hypothesis]).wer


def _one(reference: list[str], hypothesis: list[str]) -> float:
    """WER of one already-normalised pair of word lists (Levenshtein distance over words)."""
    import jiwer

    if not reference:
        return float(len(hypothesis) > 0)
    return jiwer.process_words(" ".join(reference), " ".join(hypothesis)).wer
