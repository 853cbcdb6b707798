"""Speech recognition beside the audio towers: the pocketsphinx cascade on synthesised speech,
Whisper parity on a tiny random model saved in its own format, word error rate, and the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import typer
from audio_helpers import needs_espeak, require_espeak
from typer.testing import CliRunner

from polymodal.backends.asr import load_transcriber, read_pronunciations, read_vocabulary
from polymodal.backends.pocketsphinx_asr import PocketsphinxTranscriber, grammar_words
from polymodal.data.schema import Record, UnreadableFileError, write_manifest
from polymodal.data.speech_synthesis import Voice, synthesise
from polymodal.errors import CheckpointError, DataError
from polymodal.evaluate.wer import normalise_text, wer, word_error_rate
from polymodal.modalities.audio_files import SAMPLE_RATE, write_wav
from polymodal.transcribe_cli import transcribe_cmd

# ShapesWorld-style captions: the vocabulary and word order the language model learns.
CAPTIONS = [
    "a red circle to the left of a blue square",
    "two green triangles",
    "a small yellow star above a large purple diamond",
    "there is a blue cross below a red triangle",
    "a green square to the right of a white circle",
    "an orange star on its own",
    "a large cyan triangle under a small red square",
    "a purple circle left of a yellow cross",
    "there is a small white diamond",
    "a blue rhombus over a green star",
]
SPOKEN = "a red circle to the left of a blue square"
# en-us, variant m3, 160 words a minute: espeak-ng's default American voice, clearly articulated.
# (A high-pitched fast voice such as en-us+f4 at 170 wpm, pitch 70, misses a word in one caption
# of four on ShapesWorld; this one transcribed 95 of 100 test captions exactly.)
CLEAR_VOICE = Voice(accent="en-us", variant="m3", speed=160, pitch=50)


@pytest.fixture(scope="module")
def cascade() -> PocketsphinxTranscriber:
    return PocketsphinxTranscriber.from_texts(CAPTIONS)


@pytest.fixture(scope="module")
def spoken() -> np.ndarray:
    require_espeak()
    return synthesise(SPOKEN, CLEAR_VOICE)


# ----------------------------------------------------------------------------------------------
# pocketsphinx


@needs_espeak
def test_cascade_transcribes_an_in_grammar_sentence_exactly(cascade, spoken):
    (text,) = cascade.transcribe([spoken])
    assert text == SPOKEN
    assert wer(SPOKEN, text) == 0.0
    assert wer("a green circle to the right of a blue square", text) == pytest.approx(2 / 10)


@needs_espeak
def test_cascade_transcribes_every_caption_of_its_vocabulary_exactly(cascade):
    waves = [synthesise(caption, CLEAR_VOICE) for caption in CAPTIONS]
    assert cascade.transcribe(waves) == CAPTIONS


@needs_espeak
def test_cascade_transcribes_each_utterance_on_its_own(cascade, spoken):
    """Order-independent (no state carried between utterances), and in order."""
    other = synthesise("two green triangles", CLEAR_VOICE)
    assert cascade.transcribe([other, spoken, other]) == ["two green triangles", SPOKEN, "two green triangles"]
    assert cascade.transcribe([spoken]) == [SPOKEN]


@needs_espeak
def test_cascade_with_worker_processes_agrees(spoken):
    parallel = PocketsphinxTranscriber.from_texts(CAPTIONS, workers=2)
    assert parallel.transcribe([spoken] * 8) == [SPOKEN] * 8


@needs_espeak
def test_without_a_vocabulary_pocketsphinx_uses_its_general_model():
    general = load_transcriber("pocketsphinx")
    assert general.model_id == "pocketsphinx:general" and general.vocabulary is None
    (text,) = general.transcribe([synthesise("there is a small green triangle", CLEAR_VOICE)])
    assert text and text == text.lower()  # words, not necessarily the right ones: no domain constraint


def test_language_model_vocabulary_and_missing_words():
    with pytest.warns(UserWarning, match=r"^1 vocabulary word not in the pronouncing dictionary .*: zorblax$") as seen:
        transcriber = PocketsphinxTranscriber.from_texts([*CAPTIONS, "a zorblax square"])
    assert len(seen) == 1
    assert transcriber.missing == ["zorblax"]
    assert "rhombus" in transcriber.vocabulary  # not in cmudict: polymodal supplies it
    assert "zorblax" not in transcriber.vocabulary and "circle" in transcriber.vocabulary
    with pytest.raises(DataError, match="no words"):
        PocketsphinxTranscriber.from_texts(["", "  ,. "])


def test_language_model_takes_the_callers_pronunciations():
    transcriber = PocketsphinxTranscriber.from_texts(["a zorblax square"],
                                                     pronunciations={"zorblax": "Z AO R B L AE K S"})
    assert transcriber.missing == [] and "zorblax" in transcriber.vocabulary


GRAMMAR = """#JSGF V1.0;
grammar shapes;
<colour> = red | green | blue | yellow;
<shape> = circle | square | triangle | star;
<object> = a <colour> <shape>;
<relation> = to the (left | right) of | above | below; // the four relations
public <caption> = <object> [<relation> <object>];
"""


@needs_espeak
def test_grammar_constrains_to_its_sentences(spoken):
    transcriber = PocketsphinxTranscriber.from_grammar(GRAMMAR)
    assert transcriber.transcribe([spoken]) == [SPOKEN]
    assert grammar_words(GRAMMAR) == {"red", "green", "blue", "yellow", "circle", "square", "triangle", "star",
                                      "a", "to", "the", "left", "right", "of", "above", "below"}
    with pytest.raises(DataError, match="without a pronunciation: zorblax"):
        PocketsphinxTranscriber.from_grammar(GRAMMAR.replace("star;", "zorblax;"))
    with pytest.raises(DataError, match="not a valid JSGF grammar"):
        PocketsphinxTranscriber.from_grammar(GRAMMAR.replace("[<relation> <object>]", "[<relation> <object>"))


def _dataset(root):
    records = [Record(id="t0", split="train", text=["a red circle", "a red disc"]),
               Record(id="t1", split="train", text=["two green triangles"]),
               Record(id="x0", split="test", text=["a blue square above a yellow star"])]
    root.mkdir()
    write_manifest(root / "manifest.jsonl", records)
    return root


def test_vocabulary_from_a_dataset_split_or_a_text_file(tmp_path):
    data = _dataset(tmp_path / "data")
    assert read_vocabulary(data) == ["a red circle", "a red disc", "two green triangles"]
    assert len(read_vocabulary(data, split=None)) == 4
    with pytest.raises(DataError, match=r"no records in split 'val' .*splits: train \(2\), test \(1\)"):
        read_vocabulary(data, split="val")
    text = tmp_path / "sentences.txt"
    text.write_text("a red circle\n\n  two green triangles \n")
    assert read_vocabulary(text) == ["a red circle", "two green triangles"]
    transcriber = load_transcriber("pocketsphinx", vocabulary=data)
    assert sorted(transcriber.vocabulary) == ["a", "circle", "disc", "green", "red", "triangles", "two"]
    words = tmp_path / "extra.dict"
    words.write_text(";;; mine\nzorblax Z AO R B L AE K S\nzorblax(2) Z AO R B L AA K S\n")
    assert read_pronunciations(words) == {"zorblax": ["Z AO R B L AE K S", "Z AO R B L AA K S"]}


def test_load_transcriber_refuses_what_it_cannot_load(tmp_path):
    with pytest.raises(CheckpointError, match="no such model directory") as err:
        load_transcriber(str(tmp_path / "nowhere"))
    assert "\n" not in str(err.value)
    (tmp_path / "clip").mkdir()
    (tmp_path / "clip" / "config.json").write_text(json.dumps({"model_type": "clip"}))
    with pytest.raises(CheckpointError, match="not a Whisper model directory"):
        load_transcriber(str(tmp_path / "clip"))
    with pytest.raises(ValueError, match="pocketsphinx only"):
        load_transcriber(str(tmp_path / "clip"), vocabulary=["a red circle"])


# ----------------------------------------------------------------------------------------------
# Whisper, on a tiny random model saved as transformers saves one

SPECIAL_TOKENS = ["<|endoftext|>", "<|startoftranscript|>", "<|en|>", "<|translate|>", "<|transcribe|>",
                  "<|startoflm|>", "<|startofprev|>", "<|nospeech|>", "<|notimestamps|>"]


def _tiny_whisper_tokenizer():
    """A byte-level BPE over the 256 byte symbols (every string encodes), Whisper's special tokens
    in Whisper's order, then its 1501 timestamp tokens <|0.00|> ... <|30.00|>."""
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import WhisperTokenizer

    vocab = {symbol: i for i, symbol in enumerate(sorted(ByteLevel.alphabet()))}
    merges = [("Ġ", "a"), ("r", "e"), ("Ġ", "re")]
    for left, right in merges:
        vocab[left + right] = len(vocab)
    tokenizer = WhisperTokenizer(vocab=vocab, merges=merges)  # <|endoftext|> is its unk/bos/eos
    tokenizer.add_special_tokens({"additional_special_tokens": SPECIAL_TOKENS[1:]})
    tokenizer.add_tokens([f"<|{i * 0.02:.2f}|>" for i in range(1501)])
    return tokenizer


def _tiny_whisper(directory):
    """A 1-layer, d_model 16 Whisper with the generation config multilingual checkpoints carry
    (language and task tokens, <|notimestamps|>), saved with its processor."""
    import torch
    from transformers import (
        GenerationConfig,
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
        WhisperProcessor,
    )

    tokenizer = _tiny_whisper_tokenizer()
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in SPECIAL_TOKENS}
    end, start = ids["<|endoftext|>"], ids["<|startoftranscript|>"]
    config = WhisperConfig(vocab_size=len(tokenizer), d_model=16, encoder_layers=1, decoder_layers=1,
                           encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32,
                           decoder_ffn_dim=32, max_target_positions=64, init_std=0.5, decoder_start_token_id=start,
                           bos_token_id=end, eos_token_id=end, pad_token_id=end, begin_suppress_tokens=None,
                           suppress_tokens=None)
    torch.manual_seed(0)
    model = WhisperForConditionalGeneration(config).eval()
    with torch.no_grad():
        # Timestamp logits 0 (their output embeddings, tied to the input ones, zeroed) and the
        # others scaled up (the final layer norm's gain: the text's argmax is unchanged): the text
        # never gives way to timestamps, so it decodes to something, and long form moves on a
        # whole 30 s window at a time (a random model's timestamps move it 20 ms a step).
        model.model.decoder.embed_tokens.weight[ids["<|notimestamps|>"] + 1:] = 0
        model.model.decoder.layer_norm.weight *= 8
    model.generation_config = GenerationConfig(
        decoder_start_token_id=start, eos_token_id=end, pad_token_id=end, max_length=20, is_multilingual=True,
        lang_to_id={"<|en|>": ids["<|en|>"]}, no_timestamps_token_id=ids["<|notimestamps|>"],
        task_to_id={"translate": ids["<|translate|>"], "transcribe": ids["<|transcribe|>"]})
    model.save_pretrained(directory)
    WhisperProcessor(feature_extractor=WhisperFeatureExtractor(), tokenizer=tokenizer).save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def whisper_dir(tmp_path_factory):
    pytest.importorskip("transformers")
    return _tiny_whisper(tmp_path_factory.mktemp("whisper"))


def _reference_transcripts(directory, waves, long_form=False):
    """transformers by hand: the processor's features, `generate`, `batch_decode`."""
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    processor = WhisperProcessor.from_pretrained(directory)
    model = WhisperForConditionalGeneration.from_pretrained(directory).eval()
    extra = {"truncation": False, "padding": "longest", "return_attention_mask": True} if long_form else {}
    inputs = processor(waves, sampling_rate=SAMPLE_RATE, return_tensors="pt", **extra)
    generate = {"attention_mask": inputs.attention_mask, "return_timestamps": True} if long_form else {}
    ids = model.generate(inputs.input_features, language="en", task="transcribe", **generate)
    return [text.strip() for text in processor.batch_decode(ids, skip_special_tokens=True)]


def _waves():
    rng = np.random.default_rng(0)
    return [rng.standard_normal(SAMPLE_RATE).astype(np.float32) * 0.5,  # 1 s noise
            (np.sin(np.arange(2.5 * SAMPLE_RATE) / 5) * 0.3).astype(np.float32),  # 2.5 s tone
            (rng.standard_normal(SAMPLE_RATE // 2) * 1e-3).astype(np.float32)]  # 0.5 s hiss


def test_whisper_matches_transformers_generate(whisper_dir):
    from polymodal.backends.whisper_asr import load_whisper

    waves = _waves()
    expected = [_reference_transcripts(whisper_dir, [w])[0] for w in waves]
    assert len(set(expected)) == 3 and all(expected)  # three different, non-empty texts: a real comparison
    transcriber = load_whisper(whisper_dir, batch_size=2)  # batches of 2 and 1
    assert transcriber.transcribe(waves) == expected
    assert _reference_transcripts(whisper_dir, waves) == expected  # batching changes nothing
    loaded = load_transcriber(str(whisper_dir))
    assert loaded.model_id == f"hf:{whisper_dir.resolve()}"
    assert loaded.transcribe(waves[:1]) == expected[:1]


def test_whisper_long_clips_take_the_long_form_path(whisper_dir):
    from polymodal.backends.whisper_asr import load_whisper

    rng = np.random.default_rng(1)
    long = (rng.standard_normal(40 * SAMPLE_RATE) * 0.3).astype(np.float32)  # over the 30 s window
    short = _waves()[0]
    expected_long = _reference_transcripts(whisper_dir, [long], long_form=True)
    texts = load_whisper(whisper_dir).transcribe([short, long])
    assert texts == [_reference_transcripts(whisper_dir, [short])[0], expected_long[0]]
    assert texts[1] and texts[1] != _reference_transcripts(whisper_dir, [long])[0]  # not cut to its first 30 s


def test_whisper_refuses_a_bad_directory(tmp_path, whisper_dir):
    from polymodal.backends.whisper_asr import load_whisper

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text((whisper_dir / "config.json").read_text())  # no weights, no processor
    with pytest.raises(CheckpointError, match=r"broken: not a complete Whisper model directory") as err:
        load_transcriber(str(broken))
    assert "\n" not in str(err.value)
    (tmp_path / "file.bin").write_bytes(b"x")
    with pytest.raises(CheckpointError, match="a file, not a Whisper model directory"):
        load_whisper(tmp_path / "file.bin")


# ----------------------------------------------------------------------------------------------
# Word error rate


def test_word_error_rate_on_known_strings():
    assert normalise_text("The RED circle, left-of... the Square!") == "the red circle left of the square"
    assert wer("A red circle.", "a red circle") == 0.0
    assert wer("a red circle", "a blue circle") == pytest.approx(1 / 3)  # one substitution
    assert wer("a red circle", "a circle") == pytest.approx(1 / 3)  # one deletion
    assert wer("a red circle", "a red red circle here") == pytest.approx(2 / 3)  # two insertions
    result = word_error_rate(["a red circle", "two green triangles", "a star"], ["a red circle", "two triangles", ""])
    # 0 + 1 deletion + 2 deletions over 3 + 3 + 2 reference words: corpus WER, not the mean of the three
    assert (result.substitutions, result.deletions, result.insertions, result.reference_words) == (0, 3, 0, 8)
    assert result.wer == pytest.approx(3 / 8)
    assert result.per_utterance == pytest.approx([0.0, 1 / 3, 1.0])
    with pytest.raises(ValueError, match="2 references but 1 hypotheses"):
        word_error_rate(["a", "b"], ["a"])


# ----------------------------------------------------------------------------------------------
# The command line


def _app() -> typer.Typer:
    app = typer.Typer()
    app.command("transcribe")(transcribe_cmd)
    app.command("noop")(lambda: None)  # two commands: typer keeps "transcribe" as a subcommand
    return app


@needs_espeak
def test_cli_transcribes_and_skips_an_unreadable_file(tmp_path, spoken):
    speech, empty = tmp_path / "speech.wav", tmp_path / "empty.wav"
    write_wav(speech, spoken)
    empty.write_bytes(b"")
    sentences = tmp_path / "captions.txt"
    sentences.write_text("\n".join(CAPTIONS))
    result = CliRunner().invoke(_app(), ["transcribe", str(speech), str(empty), "--vocabulary", str(sentences),
                                         "--json"])
    assert result.exit_code == 0, result.output
    assert [json.loads(line) for line in result.stdout.splitlines()] == [{"file": str(speech), "transcript": SPOKEN}]
    skipped = [line for line in result.stderr.splitlines() if line.strip()]
    assert skipped == [f"skipped {UnreadableFileError(empty, 'empty file')}"]

    table = CliRunner().invoke(_app(), ["transcribe", str(speech), "--vocabulary", str(sentences)])
    assert table.exit_code == 0 and "left of a blue" in table.stdout


def test_cli_fails_cleanly_when_nothing_is_readable(tmp_path):
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    result = CliRunner().invoke(_app(), ["transcribe", str(empty), str(tmp_path / "missing.wav")])
    assert isinstance(result.exception, DataError)
    assert str(result.exception) == "no readable audio file to transcribe"
    assert len([line for line in result.stderr.splitlines() if line.startswith("skipped ")]) == 2


@needs_espeak
def test_cli_warns_in_one_line_about_words_it_cannot_pronounce(tmp_path, spoken):
    speech = tmp_path / "speech.wav"
    write_wav(speech, spoken)
    sentences = tmp_path / "captions.txt"
    sentences.write_text("\n".join([*CAPTIONS, "a zorblax square"]))
    result = CliRunner().invoke(_app(), ["transcribe", str(speech), "--vocabulary", str(sentences), "--json"])
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert warnings == ["warning: 1 vocabulary word not in the pronouncing dictionary cannot be recognised: zorblax"]
    assert json.loads(result.stdout)["transcript"] == SPOKEN
