"""Speech recognition with pocketsphinx (CMU Sphinx): its bundled US-English acoustic model,
constrained to the words a dataset actually uses.

A recogniser that knows only a dataset's vocabulary is what the cascade needs (speech -> text ->
the text tower): a few dozen words and the way captions string them together. Three constraints:

    from_texts(captions)   a trigram language model estimated from the captions (the default)
    from_grammar(jsgf)     a JSGF grammar the user wrote (a closed set of sentence forms)
    general()              pocketsphinx's own general English model (no vocabulary: slow, and
                           far less accurate on a small domain)

The language model is an ARPA file written by `pocketsphinx.lm.ArpaBoLM` (ships with pocketsphinx:
a fixed-discount back-off trigram; no extra package) beside a pronouncing dictionary cut from the
bundled cmudict to the vocabulary. Words cmudict lacks cannot be recognised: they are dropped from
the model and named in one warning. pocketsphinx is imported inside the functions that need it.

Measured on one core, with a language model of 3,000 ShapesWorld training captions, on 100 test
captions (3.7 s on average) spoken by espeak-ng: 0.17 s an utterance (5.8 a second, 20x faster
than real time; 9.8 a second with workers=2: the decoder holds the GIL, so threads would not
help). WER 0.004 (en-us+m3, 160 wpm), 0.013 (en-us+f2, 140), 0.022 (en-us+m1, 140), 0.024
(en+m1, 160), but 0.22 for a high, fast voice (en-us+f4, 170 wpm, pitch 70).
"""

from __future__ import annotations

import re
import shutil
import tempfile
import threading
import warnings
import weakref
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

from ..errors import DataError

# A back-off language model keeps `DISCOUNT_MASS` of every history's probability for n-grams it
# never saw. Captions of a synthetic dataset are regular, so little is kept: on 40 ShapesWorld
# test captions x 5 espeak-ng voices, 0.1 gave WER 0.002-0.22 where ArpaBoLM's default 0.5 gave 0.01-0.34.
DISCOUNT_MASS = 0.1
# A faint noise floor (dBFS) under every utterance. Synthesised speech holds runs of exact digital
# silence (12% of espeak-ng samples), whose log-mel features are off the scale and throw the
# utterance's cepstral mean normalisation out: the same 200 utterances went from WER 0.36 / 0.54 /
# 0.59 (three voices) to 0.002 / 0.02 / 0.22 with a -50 dBFS floor. A real recording's own noise
# is louder than this, so there it changes nothing. Fixed seed: a file transcribes the same way
# whatever was decoded before it.
NOISE_FLOOR_DBFS = -50.0
# Words of polymodal's own synthetic datasets that cmudict lacks (ARPAbet, as cmudict writes it).
EXTRA_PRONUNCIATIONS: dict[str, list[str]] = {"rhombus": ["R AA M B AH S"]}
WORD = re.compile(r"[a-z0-9']+")


def caption_words(text: str) -> list[str]:
    """A caption as dictionary words: lower case, split at anything but letters, digits and
    apostrophes ("don't" is one cmudict word)."""
    return [w.strip("'") for w in WORD.findall(text.lower()) if w.strip("'")]


class PocketsphinxTranscriber:
    """Transcribes 16 kHz mono waveforms into lower-case words. Build it with `from_texts`,
    `from_grammar` or `general`; the files it decodes with live in `workdir` while it lives."""

    def __init__(self, decoder_args: dict[str, str], model_id: str, vocabulary: list[str] | None = None,
                 missing: list[str] | None = None, workers: int = 1, workdir: Path | None = None):
        self.decoder_args = decoder_args  # Decoder keyword arguments (hmm, lm or jsgf, dict): picklable
        self.model_id = model_id
        self.vocabulary = vocabulary  # the words it can recognise (None: all of cmudict)
        self.missing = missing or []  # vocabulary words it cannot, for want of a pronunciation
        self.workers = max(1, workers)
        self.workdir = workdir
        if workdir is not None:
            weakref.finalize(self, shutil.rmtree, str(workdir), True)
        self._decoder = _new_decoder(decoder_args)
        self._lock = threading.Lock()  # one decoder: a server's threads take turns

    @classmethod
    def from_texts(cls, texts: Iterable[str], pronunciations: Mapping[str, str | list[str]] | None = None,
                   workers: int = 1, discount_mass: float = DISCOUNT_MASS) -> PocketsphinxTranscriber:
        """A trigram language model of `texts` (a dataset's captions), over the words that have a
        pronunciation (cmudict, EXTRA_PRONUNCIATIONS, then `pronunciations`: word -> ARPAbet)."""
        sentences = [words for words in map(caption_words, texts) if words]
        if not sentences:
            raise DataError("no words in the vocabulary texts: nothing to build a language model from")
        workdir = Path(tempfile.mkdtemp(prefix="polymodal-asr-"))
        try:
            known, missing = _write_dictionary({w for s in sentences for w in s}, pronunciations,
                                               workdir / "vocabulary.dict")
            sentences = [[w for w in s if w in known] for s in sentences]  # an unknown word can't be heard
            _write_language_model([s for s in sentences if s], workdir / "vocabulary.arpa", discount_mass)
        except BaseException:
            shutil.rmtree(workdir, ignore_errors=True)
            raise
        args = {"hmm": _acoustic_model(), "lm": str(workdir / "vocabulary.arpa"),
                "dict": str(workdir / "vocabulary.dict")}
        return cls(args, f"pocketsphinx:lm({len(known)} words, {sum(map(bool, sentences))} sentences)", sorted(known),
                   missing, workers, workdir)

    @classmethod
    def from_grammar(cls, jsgf: str, pronunciations: Mapping[str, str | list[str]] | None = None,
                     workers: int = 1) -> PocketsphinxTranscriber:
        """A JSGF grammar (its text): only the sentences it generates can come out. Its words need
        pronunciations as in `from_texts`; a grammar word without one is an error, not a warning,
        since pocketsphinx cannot compile the grammar without it."""
        words = grammar_words(jsgf)
        if not words:
            raise DataError("the grammar names no words")
        workdir = Path(tempfile.mkdtemp(prefix="polymodal-asr-"))
        try:
            known, missing = _write_dictionary(words, pronunciations, workdir / "grammar.dict", warn=False)
            if missing:
                raise DataError(f"grammar words without a pronunciation: {', '.join(missing)} "
                                "(give each one: a dictionary line `word PHONES...` in ARPAbet, as cmudict has them)")
            (workdir / "grammar.jsgf").write_text(jsgf, encoding="utf-8")
            args = {"hmm": _acoustic_model(), "jsgf": str(workdir / "grammar.jsgf"),
                    "dict": str(workdir / "grammar.dict")}
            return cls(args, f"pocketsphinx:grammar({len(known)} words)", sorted(known), [], workers, workdir)
        except RuntimeError as err:  # pocketsphinx could not compile it (the details go to its log, silenced)
            shutil.rmtree(workdir, ignore_errors=True)
            raise DataError(f"not a valid JSGF grammar ({err})") from None
        except BaseException:
            shutil.rmtree(workdir, ignore_errors=True)
            raise

    @classmethod
    def general(cls, workers: int = 1) -> PocketsphinxTranscriber:
        """pocketsphinx's bundled general English language model and all of cmudict."""
        from pocketsphinx import get_model_path

        args = {"hmm": _acoustic_model(), "lm": get_model_path("en-us/en-us.lm.bin"),
                "dict": get_model_path("en-us/cmudict-en-us.dict")}
        return cls(args, "pocketsphinx:general", workers=workers)

    def transcribe(self, waves: Sequence[np.ndarray]) -> list[str]:
        """(N,) float32 16 kHz mono waveforms -> their transcripts (lower-case words, "" when
        nothing was recognised), in order. Each utterance is decoded on its own."""
        waves = [_check_wave(w) for w in waves]
        if self.workers > 1 and len(waves) >= 4 * self.workers:
            return _decode_in_processes(self.decoder_args, waves, self.workers)
        with self._lock:
            return [_decode(self._decoder, w) for w in waves]


def grammar_words(jsgf: str) -> set[str]:
    """The words a JSGF grammar's rules use, as spelled (its header, rule names, tags, weights
    and operators removed)."""
    body = re.sub(r"/\*.*?\*/|//[^\n]*", " ", jsgf, flags=re.S)  # comments
    body = re.sub(r"#JSGF[^;]*;|\bgrammar\s[^;]*;|\bimport\s[^;]*;|\bpublic\b", " ", body)
    body = re.sub(r"<[^>]*>|\{[^}]*\}|/[0-9.eE+-]+/", " ", body)  # rule names, tags, weights
    return set(re.findall(r"[^\s()\[\]|*+;=\"]+", body))


def _acoustic_model() -> str:
    from pocketsphinx import get_model_path

    return get_model_path("en-us/en-us")


def _new_decoder(args: dict[str, str]):
    from pocketsphinx import Decoder

    return Decoder(**args, loglevel="FATAL")  # its INFO lines are hundreds a model


def _write_dictionary(words: set[str], extra: Mapping[str, str | list[str]] | None, path: Path,
                      warn: bool = True) -> tuple[set[str], list[str]]:
    """A pronouncing dictionary of `words` at `path`: every pronunciation cmudict has, and ours
    (EXTRA_PRONUNCIATIONS); the caller's `extra` replace both for the words it names. Returns
    (words written, words without a pronunciation). A word is looked up in lower case and written
    as spelled (a grammar's "Red" needs its own entry). Reading all of cmudict takes about 0.1 s;
    pocketsphinx then loads 50 words instead of 126,000."""
    from pocketsphinx import get_model_path

    wanted = {w.lower() for w in words}
    found: dict[str, list[str]] = {}  # lower-case word -> ARPAbet pronunciations
    for source in (EXTRA_PRONUNCIATIONS, extra or {}):
        for word, phones in source.items():
            if word.lower() in wanted:
                found[word.lower()] = [phones] if isinstance(phones, str) else list(phones)
    overridden = {w.lower() for w in extra or {}}
    with open(get_model_path("en-us/cmudict-en-us.dict"), encoding="utf-8") as cmudict:
        for line in cmudict:
            word, _, phones = line.partition(" ")
            base = word.split("(", 1)[0]  # "either(2)": the second pronunciation of "either"
            if base in wanted and base not in overridden:
                found.setdefault(base, []).append(phones.strip())
    known = {w for w in words if w.lower() in found}
    lines = [f"{w if i == 0 else f'{w}({i + 1})'} {p}" for w in sorted(known) for i, p in enumerate(found[w.lower()])]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    missing = sorted(words - known)
    if missing and warn:
        warnings.warn(f"{len(missing)} vocabulary word{'s' if len(missing) > 1 else ''} not in the pronouncing "
                      f"dictionary cannot be recognised: {', '.join(missing[:20])}"
                      f"{' ...' if len(missing) > 20 else ''}", UserWarning, stacklevel=3)
    return known, missing


def _write_language_model(sentences: list[list[str]], path: Path, discount_mass: float) -> None:
    """An ARPA trigram model of `sentences` (with <s> and </s>) at `path`."""
    from pocketsphinx.lm import ArpaBoLM

    if not sentences:
        raise DataError("none of the vocabulary words has a pronunciation: no language model to build")
    model = ArpaBoLM(text="\n".join(" ".join(s) for s in sentences), add_start=True, discount_mass=discount_mass)
    model.compute()
    if not model.write_file(str(path)):  # it returns False instead of raising
        raise OSError(f"{path}: could not write the language model")


def _check_wave(wave) -> np.ndarray:
    wave = np.asarray(wave, dtype=np.float32)
    if wave.ndim != 1:
        raise ValueError(f"a waveform must be (N,) mono samples at 16 kHz, not shape {wave.shape}")
    return wave


def _pcm16(wave: np.ndarray) -> bytes:
    """(N,) float samples -> 16-bit little-endian PCM bytes, over the NOISE_FLOOR_DBFS floor."""
    floor = np.random.default_rng(0).standard_normal(len(wave)).astype(np.float32) * 10 ** (NOISE_FLOOR_DBFS / 20)
    return (np.clip(wave + floor, -1.0, 1.0) * 32767).astype("<i2").tobytes()


def _decode(decoder, wave: np.ndarray) -> str:
    """One whole utterance (so its cepstral mean is its own, not the previous utterance's)."""
    decoder.start_utt()
    decoder.process_raw(_pcm16(wave), full_utt=True)
    decoder.end_utt()
    hyp = decoder.hyp()
    return hyp.hypstr.lower() if hyp else ""  # hypstr leaves out fillers (<sil>, noises) and "(2)" marks


_worker_decoder = None  # one decoder per worker process


def _start_worker(args: dict[str, str]) -> None:
    global _worker_decoder
    _worker_decoder = _new_decoder(args)


def _decode_in_worker(wave: np.ndarray) -> str:
    return _decode(_worker_decoder, wave)


def _decode_in_processes(args: dict[str, str], waves: list[np.ndarray], workers: int) -> list[str]:
    """Decode in `workers` processes, each with its own decoder built from the same files.
    Forked where the platform can: a fork needs no `if __name__ == "__main__"` guard in the
    caller's script and starts at once, and the children touch only numpy and pocketsphinx, none
    of the thread pools (torch, BLAS) a fork copies in an unusable state."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    context = multiprocessing.get_context(method)
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_start_worker, initargs=(args,)) as pool:
        return list(pool.map(_decode_in_worker, waves, chunksize=max(1, len(waves) // (8 * workers))))
