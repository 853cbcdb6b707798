"""Spoken datasets: the voice pool, `speak_dataset` on a tiny ShapesWorld, background noise at an
exact SNR, audio-caption datasets through the ordinary readers, and bad audio files named and skipped."""

from __future__ import annotations

import csv
import hashlib
import json
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import typer
from audio_helpers import needs_espeak, require_espeak
from typer.testing import CliRunner

from polymodal.data import load_records, speak as speak_module
from polymodal.data.schema import DataError, SkipLog, UnreadableFileError
from polymodal.data.speak import (
    ACCENTS,
    NOISE_KINDS,
    SPEED_WPM,
    SpeakConfig,
    add_noise,
    assign_voice,
    catalogue,
    held_out_voices,
    make_noise,
    pick_caption,
    speak_dataset,
    voice_pool,
)
from polymodal.data.speech_synthesis import synthesise
from polymodal.data.synthetic.shapes import ShapesConfig, generate
from polymodal.modalities.audio_files import SAMPLE_RATE, load_audio, load_audio_records, write_wav
from polymodal.speak_cli import data_speak

SENTENCE = "a large blue square above a small red circle"  # 9 words


def tone(seconds: float = 0.5, freq: float = 440.0, amplitude: float = 0.3) -> np.ndarray:
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)  # (N,)


def snr_db(clean: np.ndarray, mixed: np.ndarray) -> float:
    clean, noise = clean.astype(np.float64), mixed.astype(np.float64) - clean
    return 10 * np.log10(np.mean(clean**2) / np.mean(noise**2))


# ----------------------------------------------------------------------------------------------
# Voices


@needs_espeak
def test_every_possible_speaker_writes_valid_16khz_speech_of_plausible_length(tmp_path):
    """Every accent x variant a pool can draw (at the speed the pool gives it): a readable 16 kHz
    wav whose length fits its speed, and no two speakers sound the same."""
    pool = voice_pool(len(catalogue()), seed=0)

    def speak(voice):
        path = tmp_path / f"{voice.name}.wav"
        write_wav(path, synthesise(SENTENCE, voice))
        return voice, path

    with ThreadPoolExecutor(2) as threads:
        spoken = list(threads.map(speak, pool))
    fingerprints = set()
    for voice, path in spoken:
        assert sf.info(str(path)).samplerate == SAMPLE_RATE
        wave = load_audio(path)  # raises for an empty, 0 s or silent file
        expected = len(SENTENCE.split()) * 60 / voice.speed  # seconds at the speaker's words a minute
        assert 0.5 * expected < len(wave) / SAMPLE_RATE < 1.6 * expected, voice
        assert 0.15 < len(wave) / SAMPLE_RATE / len(SENTENCE.split()) < 1.0, voice  # seconds a word
        fingerprints.add(hashlib.sha1(np.round(wave, 3).tobytes()).hexdigest())
    assert len(fingerprints) == len(pool)  # (espeak-ng ignores a variant on `en-gb`: hence not in ACCENTS)


def test_voice_pool_is_deterministic_spread_and_holds_speakers_out():
    pool = voice_pool(48, seed=1)
    assert pool == voice_pool(48, seed=1) and pool != voice_pool(48, seed=2)
    assert len({v.name for v in pool}) == 48
    assert {v.accent for v in pool} == set(ACCENTS)
    assert all(SPEED_WPM[0] <= v.speed <= SPEED_WPM[1] and 25 <= v.pitch <= 75 for v in pool)
    held = held_out_voices(pool, 0.2, seed=1)
    assert len(held) == 10 and held == held_out_voices(pool, 0.2, seed=1) and held <= {v.name for v in pool}
    assert held_out_voices(pool, 0.0) == set() and len(held_out_voices(pool[:2], 0.9)) == 1  # never all


def test_train_hears_only_seen_speakers_other_splits_half_and_half():
    pool = voice_pool(10, seed=0)
    held_names = held_out_voices(pool, 0.3, seed=0)
    seen, held = [v for v in pool if v.name not in held_names], [v for v in pool if v.name in held_names]
    train = [assign_voice(f"r{i}", "train", i, seen, held) for i in range(50)]
    test = [assign_voice(f"r{i}", "test", i, seen, held) for i in range(50)]
    assert all(is_seen and voice in seen for voice, is_seen in train)
    assert sum(is_seen for _, is_seen in test) == 25
    assert all((voice in seen) == is_seen for voice, is_seen in test)
    assert assign_voice("r7", "test", 7, seen, held) == test[7]  # deterministic


def test_pick_caption_cycles_or_takes_the_one_asked_for():
    captions = ["a", "b", "c"]
    assert [pick_caption(captions, n) for n in range(4)] == ["a", "b", "c", "a"]
    assert pick_caption(captions, 5, which=1) == "b" and pick_caption(captions, 5, which=9) == "c"


@pytest.mark.parametrize("bad", [dict(voices=0), dict(voices=10_000), dict(held_out_voices=1.0),
                                 dict(noise="brown"), dict(snr_db=float("nan")), dict(workers=0)])
def test_bad_settings_are_one_line_errors(bad):
    with pytest.raises(DataError) as err:
        SpeakConfig(**bad).check()
    assert "\n" not in str(err.value)


# ----------------------------------------------------------------------------------------------
# Speaking a dataset


@pytest.fixture(scope="module")
def spoken(tmp_path_factory):
    """A tiny ShapesWorld (3 captions a record), before and after `speak_dataset`."""
    root = tmp_path_factory.mktemp("spoken")
    generate(root, ShapesConfig(n_train=16, n_val=4, n_test=12, n_unseen=4, captions_per_image=3, seed=5),
             workers=1, progress=False)
    before = [json.loads(line) for line in (root / "manifest.jsonl").read_text().splitlines()]
    require_espeak()
    summary = speak_dataset(root, SpeakConfig(voices=12, held_out_voices=0.25, seed=0, workers=2), progress=False)
    return root, before, summary


def test_speak_dataset_gives_every_record_a_spoken_caption(spoken):
    root, before, summary = spoken
    after = [json.loads(line) for line in (root / "manifest.jsonl").read_text().splitlines()]
    assert summary["spoken"] == summary["records"] == len(after) == 36
    assert summary["voices_held_out"] == 3 and summary["voices_seen"] == 9 and summary["minutes"] > 0
    spoken_texts = []
    for old, new in zip(before, after):
        speech = new["attributes"].pop("speech")
        assert new.pop("audio") == f"audio/{old['split']}/{old['id']}.wav"
        assert new == old  # every other field as it was
        assert speech["text"] in old["text"] and speech["snr_db"] is None
        assert set(speech) >= {"text", "voice", "speed", "pitch", "seen_voice", "snr_db"}
        spoken_texts.append(old["text"].index(speech["text"]))
    assert set(spoken_texts) == {0, 1, 2}  # the caption spoken cycles record by record


def test_train_never_hears_held_out_voices_and_test_hears_both(spoken):
    root, _, _ = spoken
    data = load_records(root)
    held = set(json.loads((root / "dataset.json").read_text())["speech"]["held_out"])
    by_split = {}
    for record in data:
        speech = record.attributes["speech"]
        assert speech["seen_voice"] == (speech["voice"] not in held)
        by_split.setdefault(record.split, []).append(speech["seen_voice"])
    assert all(by_split["train"])
    assert by_split["test"].count(True) == by_split["test"].count(False) == 6


def test_spoken_manifest_round_trips_and_every_clip_is_16khz_audio(spoken):
    root, _, summary = spoken
    data = load_records(root, strict=True)
    assert len(data) == 36 and all(r.audio and r.image for r in data)
    records, waves = load_audio_records(data.records, data.root, data.skips)
    assert len(records) == 36 and len(data.skips) == 0
    assert all(sf.info(str(data.path(r.audio))).samplerate == SAMPLE_RATE for r in records)
    assert sum(len(w) for w in waves) / SAMPLE_RATE / 60 == pytest.approx(summary["minutes"], abs=0.01)
    meta = json.loads((root / "dataset.json").read_text())
    assert meta["generator"] == "shapes" and len(meta["speech"]["voices"]) == 12  # the rest kept


def test_rerun_keeps_the_clips_it_already_made(spoken):
    root, _, _ = spoken
    clips = sorted((root / "audio").rglob("*.wav"))
    stamps = [p.stat().st_mtime_ns for p in clips]
    manifest = (root / "manifest.jsonl").read_text()
    summary = speak_dataset(root, SpeakConfig(voices=12, held_out_voices=0.25, seed=0, workers=2), progress=False)
    assert summary["kept"] == summary["spoken"] == 36
    assert [p.stat().st_mtime_ns for p in clips] == stamps and (root / "manifest.jsonl").read_text() == manifest


@needs_espeak
def test_an_interrupted_run_resumes_from_its_journal(tmp_path, monkeypatch):
    generate(tmp_path, ShapesConfig(n_train=6, n_val=0, n_test=2, n_unseen=0, captions_per_image=2), workers=1,
             progress=False)
    config = SpeakConfig(voices=4, held_out_voices=0.25, snr_db=10.0, workers=2)

    def killed(*_):
        raise KeyboardInterrupt

    monkeypatch.setattr(speak_module, "_write_manifest_entries", killed)
    with pytest.raises(KeyboardInterrupt):
        speak_dataset(tmp_path, config, progress=False)
    monkeypatch.undo()
    assert "audio" not in (tmp_path / "manifest.jsonl").read_text()
    summary = speak_dataset(tmp_path, config, progress=False)
    assert summary["kept"] == summary["spoken"] == 8
    assert not (tmp_path / "audio" / speak_module.JOURNAL).exists()
    speech = [r.attributes["speech"] for r in load_records(tmp_path)]
    assert all(s["snr_db"] == 10.0 and s["noise"] == "pink" for s in speech)
    changed = speak_dataset(tmp_path, SpeakConfig(voices=4, held_out_voices=0.25, workers=2), progress=False)
    assert changed["kept"] == 0 and changed["spoken"] == 8  # clean speech asked for: made again


@needs_espeak
def test_records_without_text_own_audio_and_bad_lines_are_left_as_they_were(tmp_path):
    write_wav(tmp_path / "mine.wav", tone())
    lines = [json.dumps({"id": "a", "text": ["a red circle"], "split": "test", "extra": 1}),
             json.dumps({"id": "b", "text": ["  "]}),
             json.dumps({"id": "c", "audio": "mine.wav", "text": ["my own recording"]}),
             "not json", json.dumps({"id": "odd/name?", "text": "a blue star", "attributes": None})]
    (tmp_path / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    summary = speak_dataset(tmp_path, SpeakConfig(voices=2, held_out_voices=0.5, workers=1), progress=False)
    assert (summary["spoken"], summary["skipped_no_text"], summary["own_audio"], summary["unreadable_lines"]) == \
        (2, 1, 1, 1)
    out = (tmp_path / "manifest.jsonl").read_text().splitlines()
    assert out[1:4] == lines[1:4]
    first, odd = json.loads(out[0]), json.loads(out[4])
    assert first["extra"] == 1 and first["audio"] == "audio/test/a.wav"
    assert odd["audio"].startswith("audio/train/odd_name_-") and (tmp_path / odd["audio"]).is_file()


def test_a_directory_without_a_manifest_is_one_clear_error(tmp_path):
    with pytest.raises(DataError, match="no manifest.jsonl here"):
        speak_dataset(tmp_path, progress=False)


@needs_espeak
def test_the_command_prints_one_summary_line(tmp_path):
    generate(tmp_path, ShapesConfig(n_train=4, n_val=0, n_test=2, n_unseen=0, captions_per_image=1), workers=1,
             progress=False)
    app = typer.Typer()
    app.command()(data_speak)
    result = CliRunner().invoke(app, [str(tmp_path), "--voices", "4", "--held-out", "0.25", "--snr", "5",
                                      "--workers", "2", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert re.fullmatch(r"spoke 6 of 6 records; skipped none; voices: 3 seen, 1 held out; "
                        r"\d+\.\d minutes of audio at 5 dB SNR\n", result.output), result.output
    result = CliRunner().invoke(app, [str(tmp_path / "nowhere"), "--no-progress"])
    assert isinstance(result.exception, DataError)


# ----------------------------------------------------------------------------------------------
# Background noise


@pytest.mark.parametrize("kind", NOISE_KINDS)
@pytest.mark.parametrize("target", [20.0, 5.0, 0.0, -5.0])
def test_add_noise_hits_the_requested_snr(kind, target):
    clean = tone(1.3) * np.hanning(int(1.3 * SAMPLE_RATE)).astype(np.float32)  # (N,), not stationary
    mixed = add_noise(clean, target, np.random.default_rng(0), kind)
    assert mixed.shape == clean.shape and mixed.dtype == np.float32
    assert snr_db(clean, mixed) == pytest.approx(target, abs=0.1)
    assert np.array_equal(mixed, add_noise(clean, target, np.random.default_rng(0), kind))  # deterministic
    assert not np.array_equal(mixed, add_noise(clean, target, np.random.default_rng(1), kind))


def test_pink_noise_has_more_power_low_than_high():
    noise = make_noise("pink", 4 * SAMPLE_RATE, np.random.default_rng(0))  # (N,)
    power = np.abs(np.fft.rfft(noise)) ** 2
    freqs = np.fft.rfftfreq(len(noise), 1 / SAMPLE_RATE)
    low, high = power[(freqs > 100) & (freqs < 200)].mean(), power[(freqs > 4000) & (freqs < 8000)].mean()
    assert 10 < low / high < 100  # 1/f: a 40x ratio of frequencies is a 40x ratio of power density
    assert np.mean(noise**2) == pytest.approx(1.0)


def test_noise_cannot_be_set_against_silence():
    with pytest.raises(DataError, match="silence"):
        add_noise(np.zeros(1000, np.float32), 5.0, np.random.default_rng(0))


# ----------------------------------------------------------------------------------------------
# Audio-caption datasets through the ordinary readers


def test_a_folder_of_audio_with_sidecar_captions(tmp_path):
    write_wav(tmp_path / "clip.wav", tone())
    (tmp_path / "clip.txt").write_text("a dog barks\n\na door slams\n")
    sf.write(str(tmp_path / "other.flac"), tone(freq=220), SAMPLE_RATE)
    (tmp_path / "README.md").write_text("not a record")
    data = load_records(tmp_path)
    assert [(r.id, r.audio, r.image, r.text) for r in data] == [
        ("clip.wav", "clip.wav", None, ["a dog barks", "a door slams"]), ("other.flac", "other.flac", None, [])]
    assert len(data.skips) == 0


def test_a_class_folder_of_sounds(tmp_path):
    for label, freq in (("dog_bark", 300), ("siren", 900)):
        (tmp_path / label).mkdir()
        write_wav(tmp_path / label / "1.wav", tone(freq=freq))
    (tmp_path / "siren" / "1.txt").write_text("a siren wails")
    (tmp_path / "siren" / "notes.txt").write_text("a stray file")
    data = load_records(tmp_path)
    assert sorted((r.labels, r.audio, tuple(r.text)) for r in data) == [
        ("dog bark", "dog_bark/1.wav", ()), ("siren", "siren/1.wav", ("a siren wails",))]
    assert [where for where, _ in data.skips.skipped] == [str(tmp_path / "siren" / "notes.txt")]


@pytest.mark.parametrize("suffix,sep", [(".csv", ","), (".tsv", "\t")])
def test_a_table_with_an_audio_column(tmp_path, suffix, sep):
    write_wav(tmp_path / "a.wav", tone())
    write_wav(tmp_path / "b.wav", tone(freq=220))
    with (tmp_path / f"pairs{suffix}").open("w", newline="") as f:
        writer = csv.writer(f, delimiter=sep)
        writer.writerows([["audio", "caption"], ["a.wav", "a high tone"], ["b.wav", "a low tone"],
                          ["", "no audio"], ["gone.wav", "missing"]])
    data = load_records(tmp_path / f"pairs{suffix}")
    assert [(r.audio, r.image, r.text) for r in data] == [("a.wav", None, ["a high tone"]),
                                                         ("b.wav", None, ["a low tone"])]
    assert [why for _, why in data.skips.skipped] == ["empty 'audio'", "file not found"]


def test_a_table_whose_one_path_column_holds_sound_files(tmp_path):
    write_wav(tmp_path / "a.wav", tone())
    (tmp_path / "pairs.csv").write_text("filepath,title\na.wav,a tone\n")
    assert [(r.audio, r.image) for r in load_records(tmp_path / "pairs.csv")] == [("a.wav", None)]


def test_a_table_without_a_media_column_fails_clearly(tmp_path):
    (tmp_path / "bad.csv").write_text("caption\nhello\n")
    with pytest.raises(DataError, match="no column 'filepath' or 'audio'"):
        load_records(tmp_path / "bad.csv")


# ----------------------------------------------------------------------------------------------
# Bad audio: one clear line each, skipped and counted in a bulk load


def write_bad_audio(folder: Path) -> dict[str, str]:
    """File name -> a fragment of the reason it cannot be used."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "empty.wav").write_bytes(b"")
    (folder / "text.wav").write_text("this is not audio\n")
    sf.write(str(folder / "zero.wav"), np.zeros(0, np.float32), SAMPLE_RATE)
    # 10 minutes, cheaply: a 100 Hz 8-bit file; the length is refused from the header
    sf.write(str(folder / "ten-minutes.wav"), np.full(600 * 100, 0.5, np.float32), 100, subtype="PCM_U8")
    write_wav(folder / "silent.wav", np.zeros(SAMPLE_RATE, np.float32))
    return {"empty.wav": "empty file", "text.wav": "not a readable audio file", "zero.wav": "empty audio (0.00 s)",
            "ten-minutes.wav": "too long (600 s", "silent.wav": "silent audio"}


def test_each_bad_audio_file_is_one_clear_line(tmp_path):
    for name, reason in write_bad_audio(tmp_path).items():
        with pytest.raises(UnreadableFileError) as err:
            load_audio(tmp_path / name)
        message = str(err.value)
        assert "\n" not in message and message.startswith(str(tmp_path / name) + ": ") and reason in message


def test_bad_audio_is_skipped_and_named_in_a_bulk_load(tmp_path):
    bad = write_bad_audio(tmp_path)
    write_wav(tmp_path / "good.wav", tone())
    names = ["good.wav", *bad, "missing.wav"]
    (tmp_path / "manifest.jsonl").write_text("".join(json.dumps({"id": n, "audio": n, "text": "x"}) + "\n"
                                                     for n in names))
    data = load_records(tmp_path)  # the readers check that each file is there
    assert [r.id for r in data] == ["good.wav", *bad]
    records, waves = load_audio_records(data.records, data.root, data.skips)  # decoding checks the rest
    assert [r.id for r in records] == ["good.wav"] and waves[0].shape == (SAMPLE_RATE // 2,)
    summary = data.skips.summary()
    assert summary.startswith(f"skipped {len(bad) + 1} bad record(s):")
    for name, reason in {**bad, "missing.wav": "file not found"}.items():
        assert f"{tmp_path / name}: {reason}" in summary
    with pytest.raises(DataError, match="empty.wav: empty file"):
        load_audio_records(data.records, data.root, SkipLog(strict=True))
