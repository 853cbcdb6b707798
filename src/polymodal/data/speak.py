"""Spoken captions: `polymodal data speak DATASET` gives every record with a caption an `audio`
field, one of its captions spoken by one of many synthetic speakers, optionally in background noise.

The speakers are espeak-ng English accents x voice variants, each with its own speed and pitch. A
seeded fraction of them is held out: the train split never hears them, every other split hears
them in half of its records, so that retrieval can be scored on seen and unseen speakers apart.

Everything is deterministic under the seed: the pool, the held-out speakers, which record gets
which speaker and caption, and the noise. A rerun keeps every clip that is already there for the
same caption and speaker, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import re
import subprocess
import time
import zlib
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..modalities.audio_files import SAMPLE_RATE, SILENCE_PEAK, write_wav
from ..utils import atomic_path, progress_bar, write_json
from .formats.coco import read_json_file
from .formats.manifest import MANIFEST
from .schema import DataError, Record, SkipLog
from .speech_synthesis import ESPEAK, Voice, espeak_available, synthesise

# espeak-ng's English accents. Plain `en-gb` is left out: espeak-ng ignores a variant added to it
# (every `en-gb+<variant>` sounds the same), so British English is `en` (the same voice file, gmw/en).
ACCENTS = ("en", "en-us", "en-us-nyc", "en-gb-x-rp", "en-gb-scotland", "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-029")
# Voice variants (espeak-ng-data/voices/!v). `klatt6` is left out: it sounds exactly like `klatt`.
VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5",
            "klatt", "klatt2", "klatt3", "klatt4", "klatt5")
SPEED_WPM = (130, 200)  # each speaker's speed, words a minute: slow and careful to brisk
PITCH = (25, 75)  # each speaker's base pitch on espeak-ng's 0-99 scale
NOISE_KINDS = ("pink", "white", "babble")
PEAK = 0.99  # a clip (with its noise) louder than this is scaled down whole, so the wav never clips
AUDIO_DIR = "audio"
JOURNAL = ".speak-journal.jsonl"  # clips finished by a run that has not rewritten the manifest yet


@dataclass
class SpeakConfig:
    voices: int = 48  # speakers in the pool (distinct accent x variant pairs, at most len(catalogue()))
    held_out_voices: float = 0.2  # fraction of the pool that train never hears
    seed: int = 0  # picks the pool, the held-out speakers, each record's speaker, and the noise
    snr_db: float | None = None  # mix background noise into every clip at this SNR; None: clean speech
    noise: str = "pink"  # the background noise: pink, white or babble
    caption: int | None = None  # the caption to speak: None cycles through them by record number
    workers: int | None = None  # espeak-ng processes at once (default: all cores)

    def check(self) -> None:
        """Every setting the user can get wrong, as one DataError line."""
        if not 1 <= self.voices <= len(catalogue()):
            raise DataError(f"--voices must be between 1 and {len(catalogue())} (got {self.voices})")
        if not 0.0 <= self.held_out_voices < 1.0:
            raise DataError(f"--held-out must be a fraction in [0, 1) (got {self.held_out_voices})")
        if self.held_out_voices and self.voices < 2:
            raise DataError("holding voices out needs at least 2 voices (one seen, one held out)")
        if self.snr_db is not None and not math.isfinite(self.snr_db):
            raise DataError(f"--snr must be a number of dB (got {self.snr_db})")
        if self.noise not in NOISE_KINDS:
            raise DataError(f"unknown noise '{self.noise}' (known: {', '.join(NOISE_KINDS)})")
        if self.caption is not None and self.caption < 0:
            raise DataError(f"--caption must be >= 0 (got {self.caption})")
        if self.workers is not None and self.workers < 1:
            raise DataError(f"--workers must be >= 1 (got {self.workers})")


# ----------------------------------------------------------------------------------------------
# Speakers


def catalogue() -> list[tuple[str, str]]:
    """Every (accent, variant) pair a speaker can be."""
    return [(accent, variant) for accent in ACCENTS for variant in VARIANTS]


def voice_pool(n_voices: int = 48, seed: int = 0) -> list[Voice]:
    """`n_voices` distinct speakers, spread evenly over the accents, each with its own speed and
    pitch; the same arguments give the same pool."""
    rng = random.Random(f"voice-pool/{seed}")
    variants = {accent: rng.sample(VARIANTS, len(VARIANTS)) for accent in ACCENTS}  # a shuffled copy each
    accents = rng.sample(ACCENTS, len(ACCENTS))
    pool = []
    for i in range(n_voices):  # round-robin over the accents, so that a small pool still has them all
        accent = accents[i % len(accents)]
        variant = variants[accent][i // len(accents)]
        pool.append(Voice(accent, variant, speed=rng.randint(*SPEED_WPM), pitch=rng.randint(*PITCH)))
    return pool


def held_out_voices(pool: list[Voice], fraction: float, seed: int = 0) -> set[str]:
    """The names of the speakers train never hears: round(fraction x pool) of them (at least one
    when the fraction is above 0, and never all)."""
    if fraction <= 0 or len(pool) < 2:
        return set()
    count = min(len(pool) - 1, max(1, round(fraction * len(pool))))
    return {v.name for v in random.Random(f"held-out/{seed}").sample(pool, count)}


def assign_voice(record_id: str, split: str, position: int, seen: list[Voice], held: list[Voice],
                 seed: int = 0) -> tuple[Voice, bool]:
    """(the speaker of a record, whether train hears that speaker). Train records get seen speakers
    only; in every other split, alternate records (by `position` within the split) get held-out ones."""
    group = held if split != "train" and held and position % 2 else seen
    rng = random.Random(f"speaker/{seed}/{record_id}")
    return group[rng.randrange(len(group))], group is seen


def pick_caption(captions: list[str], number: int, which: int | None = None) -> str:
    """The caption to speak: the `which`-th (the last when there are fewer), or with None the
    (number mod count)-th, so that consecutive records speak different captions."""
    if which is None:
        return captions[number % len(captions)]
    return captions[min(which, len(captions) - 1)]


# ----------------------------------------------------------------------------------------------
# Background noise


def add_noise(wave: np.ndarray, snr_db: float, rng: np.random.Generator, kind: str = "pink") -> np.ndarray:
    """(N,) clean samples -> (N,) float32 samples with noise added at exactly `snr_db`: signal power
    over noise power, both over the whole clip. The result is the plain sum (it may exceed +-1)."""
    clean = np.asarray(wave, dtype=np.float64)  # (N,)
    signal_power = float(np.mean(clean**2)) if clean.size else 0.0
    if signal_power == 0.0:
        raise DataError("cannot mix noise at a signal-to-noise ratio into silence")
    noise = make_noise(kind, clean.size, rng)  # (N,)
    gain = math.sqrt(signal_power / (float(np.mean(noise**2)) * 10 ** (snr_db / 10)))
    return (clean + gain * noise).astype(np.float32)


def make_noise(kind: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """(n,) float64 noise of unit power. Background hum, wind and traffic are closer to pink (1/f
    power) than to white; babble is several unintelligible talkers at once."""
    if kind == "white":
        noise = rng.standard_normal(n)
    elif kind == "pink":
        noise = _shaped_noise(n, rng, low_hz=20.0, high_hz=SAMPLE_RATE / 2)
    elif kind == "babble":
        noise = _babble(n, rng)
    else:
        raise DataError(f"unknown noise '{kind}' (known: {', '.join(NOISE_KINDS)})")
    rms = float(np.sqrt(np.mean(noise**2))) if n else 0.0
    if rms < 1e-12:  # a clip of a few samples has nothing left in the band: white noise will do
        noise = rng.standard_normal(n)
        rms = max(float(np.sqrt(np.mean(noise**2))), 1e-12)
    return noise / rms


def _shaped_noise(n: int, rng: np.random.Generator, low_hz: float, high_hz: float) -> np.ndarray:
    """(n,) white noise shaped to 1/f power between `low_hz` and `high_hz` (nothing outside). Made at
    a power-of-two length and cut: an FFT of a length with a large prime factor is ten times slower."""
    size = 1 << max(n - 1, 1).bit_length()
    spectrum = np.fft.rfft(rng.standard_normal(size))  # (size // 2 + 1,)
    freqs = np.fft.rfftfreq(size, d=1.0 / SAMPLE_RATE)
    band = (freqs >= low_hz) & (freqs <= high_hz)
    spectrum = np.where(band, spectrum / np.sqrt(np.maximum(freqs, low_hz)), 0.0)
    return np.fft.irfft(spectrum, n=size)[:n]


def _babble(n: int, rng: np.random.Generator, talkers: int = 6) -> np.ndarray:
    """(n,) babble-like noise: `talkers` streams of speech-band (100-4000 Hz) pink noise, each
    switched on and off by its own random syllable-rate (~4 Hz) envelope, added up. No words, so
    nothing in it can be mistaken for a caption."""
    steps = max(2, int(n / SAMPLE_RATE * 8) + 2)  # envelope points at 8 Hz: syllables of ~1/4 s
    t = np.linspace(0, steps - 1, n)
    out = np.zeros(n)
    for _ in range(talkers):
        envelope = np.interp(t, np.arange(steps), np.maximum(rng.standard_normal(steps), 0.0))  # (n,)
        out += envelope * _shaped_noise(n, rng, low_hz=100.0, high_hz=4000.0)
    return out


# ----------------------------------------------------------------------------------------------
# Speaking a dataset


@dataclass
class _Job:
    """One clip to synthesise: record `index` in the manifest gets `speech` at `audio`."""

    index: int
    record_id: str
    audio: str  # relative to the dataset root
    speech: dict  # becomes record.attributes["speech"]
    voice: Voice


def speak_dataset(root: str | Path, config: SpeakConfig | None = None, progress: bool = True) -> dict:
    """Add a spoken caption to every record of the dataset at `root` that has text; rewrite its
    manifest (every other field as it was) and its dataset.json's `speech` entry. Returns a summary."""
    started = time.perf_counter()
    config = config or SpeakConfig()
    config.check()
    root = Path(root)
    entries = _read_manifest_entries(root / MANIFEST)
    if not espeak_available():
        raise DataError(f"{ESPEAK} is not installed (apt-get install -y espeak-ng; `make install` does it)")
    pool = voice_pool(config.voices, config.seed)
    held_names = held_out_voices(pool, config.held_out_voices, config.seed)
    jobs, counts = _plan(entries, pool, held_names, config)
    done = _finished_clips(entries, jobs, root)
    failures = SkipLog()
    seconds = _run_jobs([j for j in jobs if j.index not in done], root, config, progress, failures)
    seconds.update(done)
    for job in jobs:
        if job.index in seconds:
            obj = entries[job.index]
            obj["audio"] = job.audio
            obj["attributes"] = {**(obj.get("attributes") or {}), "speech": job.speech}
    _write_manifest_entries(root / MANIFEST, entries)
    _record_in_dataset_json(root, pool, held_names, config)
    (root / AUDIO_DIR / JOURNAL).unlink(missing_ok=True)
    return {"records": counts["records"], "spoken": len(seconds), "kept": len(done), "failed": len(failures),
            "skipped_no_text": counts["no_text"], "own_audio": counts["own_audio"], "unreadable_lines": counts["bad"],
            "voices_seen": len(pool) - len(held_names), "voices_held_out": len(held_names),
            "minutes": round(sum(seconds.values()) / 60, 2), "snr_db": config.snr_db,
            "seconds": round(time.perf_counter() - started, 2), "skips": failures.summary()}


def _read_manifest_entries(path: Path) -> list[dict | bytes]:
    """Each manifest line as its JSON object, or as its bytes when it is not a record (kept as it
    was: this command adds audio, it does not clean a manifest)."""
    if not path.is_file():
        raise DataError(f"{path}: no manifest.jsonl here (is this a polymodal dataset directory?)")
    entries: list[dict | bytes] = []
    with path.open("rb") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                obj = json.loads(line.decode("utf-8"))
                if not isinstance(Record.from_json(obj).attributes, dict):  # raises for what is not a record
                    raise DataError("'attributes' is not an object")
                entries.append(obj)
            except (UnicodeDecodeError, json.JSONDecodeError, DataError):
                entries.append(line.rstrip(b"\r\n"))
    return entries


def _plan(entries: list[dict | bytes], pool: list[Voice], held_names: set[str],
          config: SpeakConfig) -> tuple[list[_Job], dict]:
    """A job for every record with a caption; the counts of those left alone and why."""
    seen = [v for v in pool if v.name not in held_names]
    held = [v for v in pool if v.name in held_names]
    counts = {"records": 0, "no_text": 0, "own_audio": 0, "bad": 0}
    positions: dict[str, int] = {}  # records so far in each split
    jobs, paths = [], set()
    for index, obj in enumerate(entries):
        if isinstance(obj, bytes):
            counts["bad"] += 1
            continue
        record = Record.from_json(obj)
        counts["records"] += 1
        captions = [t.strip() for t in record.text if isinstance(t, str) and t.strip()]
        if record.audio and "speech" not in record.attributes:  # the user's own recording: keep it
            counts["own_audio"] += 1
            continue
        if not captions:
            counts["no_text"] += 1
            continue
        position = positions[record.split] = positions.get(record.split, -1) + 1
        voice, is_seen = assign_voice(record.id, record.split, position, seen, held, config.seed)
        text = pick_caption(captions, counts["records"] - 1, config.caption)
        speech = {"text": text, **voice.to_dict(), "seen_voice": is_seen, "snr_db": config.snr_db,
                  "noise": config.noise if config.snr_db is not None else None}
        audio = f"{AUDIO_DIR}/{_safe_name(str(record.split))}/{_safe_name(record.id)}.wav"
        if audio in paths:  # two records with one id: each gets its own file
            audio = audio.removesuffix(".wav") + f"-{index}.wav"
        paths.add(audio)
        jobs.append(_Job(index, record.id, audio, speech, voice))
    return jobs, counts


def _safe_name(name: str) -> str:
    """`name` as a file name: kept when it is plain, else its odd characters replaced and a short
    hash added, so that two ids never share a file."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", name).lstrip(".") or "_"
    if safe == name:
        return name
    return f"{safe[:100]}-{hashlib.sha1(name.encode('utf-8', 'surrogatepass')).hexdigest()[:8]}"


def _finished_clips(entries: list[dict | bytes], jobs: list[_Job], root: Path) -> dict[int, float]:
    """{manifest index: seconds} of the clips already on disk for the same caption and speaker: from
    the manifest (an earlier run) or the journal (a run that stopped before rewriting it)."""
    journal = {}
    path = root / AUDIO_DIR / JOURNAL
    if path.is_file():
        for line in path.read_text(errors="replace").splitlines():
            try:
                item = json.loads(line)
                journal[item["audio"]] = item["speech"]
            except (json.JSONDecodeError, KeyError, TypeError):
                continue  # a line cut short when the run was killed
    done = {}
    for job in jobs:
        obj = entries[job.index]
        before = (obj.get("attributes") or {}).get("speech") if obj.get("audio") == job.audio else None
        if job.speech in (before, journal.get(job.audio)):
            seconds = _wav_seconds(root / job.audio)
            if seconds:
                done[job.index] = seconds
    return done


def _wav_seconds(path: Path) -> float | None:
    """The duration of a 16 kHz wav from its header; None when the file is missing or not one."""
    import soundfile as sf

    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError, OSError):
        return None
    if info.samplerate != SAMPLE_RATE or info.frames <= 0:
        return None
    return info.frames / SAMPLE_RATE


def _run_jobs(jobs: list[_Job], root: Path, config: SpeakConfig, progress: bool, failures: SkipLog) -> dict[int, float]:
    """Synthesise the clips on a thread pool (espeak-ng runs as a subprocess, so threads run in
    parallel); each finished clip is noted in the journal. Returns {manifest index: seconds}."""
    for folder in {(root / job.audio).parent for job in jobs}:
        folder.mkdir(parents=True, exist_ok=True)
    seconds: dict[int, float] = {}
    workers = config.workers or os.cpu_count() or 1
    start = time.perf_counter()
    with progress_bar(progress and bool(jobs)) as bar, ThreadPoolExecutor(workers) as pool, \
            (root / AUDIO_DIR / JOURNAL).open("a") as journal:
        task = bar.add_task("speaking captions", total=len(jobs))
        futures = {pool.submit(_speak_one, job, root, config): job for job in jobs}
        for future in as_completed(futures):
            job = futures[future]
            try:
                seconds[job.index] = future.result()
                journal.write(json.dumps({"audio": job.audio, "speech": job.speech}) + "\n")
                journal.flush()
            except (DataError, subprocess.TimeoutExpired) as err:
                failures.skip(f"record {job.record_id}", str(err))
            rate = len(seconds) / max(time.perf_counter() - start, 1e-9)
            bar.update(task, advance=1, description=f"speaking captions ({rate:.0f} clips/s)")
    return seconds


def _speak_one(job: _Job, root: Path, config: SpeakConfig) -> float:
    """Synthesise, add noise if asked, write the wav; returns its duration in seconds."""
    wave = synthesise(job.speech["text"], job.voice)  # (N,) float32 at 16 kHz
    if np.abs(wave).max(initial=0.0) < SILENCE_PEAK:  # a caption of punctuation only, say
        raise DataError(f"{ESPEAK} made silence of {job.speech['text']!r}")
    if config.snr_db is not None:
        rng = np.random.default_rng([config.seed, zlib.crc32(job.record_id.encode("utf-8", "surrogatepass"))])
        wave = add_noise(wave, config.snr_db, rng, config.noise)
    peak = float(np.abs(wave).max(initial=0.0))
    if peak > PEAK:  # scaling the whole mixture keeps its signal-to-noise ratio
        wave = wave * (PEAK / peak)
    write_wav(root / job.audio, wave)
    return len(wave) / SAMPLE_RATE


def _write_manifest_entries(path: Path, entries: list[dict | bytes]) -> None:
    """The manifest, written whole under a temporary name and then renamed."""
    with atomic_path(path) as tmp, tmp.open("wb") as f:
        for entry in entries:
            f.write((entry if isinstance(entry, bytes) else json.dumps(entry).encode("utf-8")) + b"\n")


def _record_in_dataset_json(root: Path, pool: list[Voice], held_names: set[str], config: SpeakConfig) -> None:
    """dataset.json (when the dataset has one) says how its audio was made."""
    path = root / "dataset.json"
    if not path.is_file():
        return
    meta = read_json_file(path)
    if not isinstance(meta, dict):
        return
    settings = {k: v for k, v in asdict(config).items() if k != "workers"}
    meta["speech"] = {**settings, "sample_rate": SAMPLE_RATE, "synthesiser": ESPEAK,
                      "voices": [{**v.to_dict(), "held_out": v.name in held_names} for v in pool],
                      "held_out": sorted(held_names)}
    write_json(path, meta)
