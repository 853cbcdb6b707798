"""Hugging Face CLAP behind polymodal's audio–text interface, on tiny random models saved with
save_pretrained: embeddings equal transformers' own from the checkpoint's processor, a file
equals its samples, zero-shot probabilities are the model's, a clip's embedding does not depend
on its batch or on chance, and a model that is not there fails in one clean line."""

import shutil

import numpy as np
import pytest
import torch
from backend_fixtures import make_clap_model

import polymodal
from polymodal.backends.clap import ClapBackend, is_clap_dir, load_clap
from polymodal.errors import CheckpointError
from polymodal.modalities.audio_files import SAMPLE_RATE, resample

TEXTS = ["the dog barks", "a cat", "the rain on a roof at night"]


@pytest.fixture(scope="module")
def clap(tmp_path_factory):
    directory = tmp_path_factory.mktemp("clap")
    model, processor = make_clap_model(directory)
    return directory, model, processor


@pytest.fixture(scope="module")
def fused_clap(tmp_path_factory):
    directory = tmp_path_factory.mktemp("clap-fused")
    model, processor = make_clap_model(directory, fusion=True)
    return directory, model, processor


def _waves(seconds=(0.5, 1.3, 2.0), seed=0):
    """16 kHz clips: a tone in noise, of different lengths (the tiny model's window is 2 s)."""
    rng = np.random.RandomState(seed)
    out = []
    for i, s in enumerate(seconds):
        t = np.arange(int(s * SAMPLE_RATE)) / SAMPLE_RATE
        out.append((0.3 * np.sin(2 * np.pi * (220 + 110 * i) * t) + 0.05 * rng.randn(len(t))).astype(np.float32))
    return out


def _unit(x):
    x = getattr(x, "pooler_output", x)  # transformers 5 returns an output object
    return x / x.norm(dim=-1, keepdim=True)


def _reference_inputs(processor, waves, texts=None):
    """The processor's own inputs for 16 kHz clips, resampled to the extractor's 48 kHz."""
    rate = processor.feature_extractor.sampling_rate
    audio = [resample(w, SAMPLE_RATE, rate) for w in waves]
    return processor(audio=audio, text=texts, sampling_rate=rate, padding=True, return_tensors="pt")


def test_clap_matches_transformers(clap):
    directory, ref, processor = clap
    model = polymodal.load(directory)
    assert isinstance(model, ClapBackend) and is_clap_dir(directory)
    assert model.model_id == f"hf:{directory.resolve()}"
    assert model.modalities == ("audio", "text") and model.embed_dim == 12
    inputs = _reference_inputs(processor, _waves())
    enc = processor.tokenizer(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        ref_audio = _unit(ref.get_audio_features(**inputs))
        ref_text = _unit(ref.get_text_features(**enc))
    audio, text = model.encode_audio(_waves(), batch_size=2), model.encode_text(TEXTS)
    assert audio.shape == (3, 12) and audio.dtype == torch.float32 and audio.device.type == "cpu"
    assert (audio - ref_audio).abs().max() <= 1e-5
    assert (text - ref_text).abs().max() <= 1e-5


def test_zero_shot_probabilities_are_the_models(clap):
    directory, ref, processor = clap
    model = polymodal.load(directory)
    probs = model.similarity_audio(_waves(), TEXTS, softmax=True)
    assert probs.shape == (3, 3) and torch.allclose(probs.sum(dim=1), torch.ones(3), atol=1e-5)
    with torch.no_grad():
        logits = ref(**_reference_inputs(processor, _waves(), TEXTS)).logits_per_audio
    assert (probs - logits.softmax(dim=-1)).abs().max() <= 1e-5
    sims = model.similarity_audio(_waves(), TEXTS)
    assert sims.abs().max() <= 1 + 1e-5  # cosines without softmax


def test_audio_file_gives_the_embedding_of_its_samples(clap, tmp_path):
    import soundfile as sf

    directory, _, _ = clap
    model = polymodal.load(directory)
    ints = np.round(_waves((1.1,))[0] * 32767).astype(np.int16)
    sf.write(str(tmp_path / "clip.wav"), ints, SAMPLE_RATE, subtype="PCM_16")
    samples = ints.astype(np.float32) / 32768  # what soundfile reads back from 16-bit PCM
    from_file = model.encode_audio([tmp_path / "clip.wav", str(tmp_path / "clip.wav")])
    assert (from_file - model.encode_audio([samples])).abs().max() <= 1e-6


def test_a_clip_embeds_the_same_alone_in_any_batch_and_every_time(clap, fused_clap):
    """The extractor crops long clips at random and, with fusion, treats a random clip of an
    all-short batch as long; polymodal pins both, so an index and a query agree."""
    for directory, _, _ in (clap, fused_clap):
        model = polymodal.load(directory)
        long = _waves((5.0,), seed=1)[0]  # longer than either window: cropped (unfused) or fused
        clips = _waves((0.4, 0.9)) + [long]
        batch = model.encode_audio(clips)
        alone = torch.cat([model.encode_audio([c]) for c in clips])
        assert (batch - alone).abs().max() <= 1e-5
        assert torch.equal(model.encode_audio([long]), model.encode_audio([long]))


def test_fused_clap_matches_transformers_with_true_is_longer(fused_clap):
    directory, ref, processor = fused_clap
    model = polymodal.load(directory)
    waves = _waves((0.3, 0.8, 1.0))
    inputs = _reference_inputs(processor, waves)
    inputs["is_longer"] = torch.zeros_like(inputs["is_longer"])  # none is longer than the 1 s window
    with torch.no_grad():
        ref_audio = _unit(ref.get_audio_features(**inputs))
    assert (model.encode_audio(waves) - ref_audio).abs().max() <= 1e-5


def test_is_longer_is_the_extractors_own_decision(fused_clap):
    """`_is_longer` mirrors the extractor's rule for one clip, at the edges of its window."""
    directory, _, processor = fused_clap
    model = polymodal.load(directory)
    fe = processor.feature_extractor
    window, hop = fe.nb_max_samples, fe.hop_length
    very_long = np.random.RandomState(0).randn(3 * window)  # a batch with a long clip is flagged truthfully
    for samples in (window - 1, window, window + 1, window + hop - 1, (window // hop + 1) * hop, window + 5 * hop):
        clip = np.random.RandomState(samples).randn(samples)
        flags = fe([clip, very_long], sampling_rate=fe.sampling_rate)["is_longer"]
        assert model._is_longer(samples) == flags[0][0], samples


def test_no_images_and_bad_clips_fail_clearly(clap):
    model = polymodal.load(clap[0])
    with pytest.raises(ValueError, match=r": has no image tower \(it embeds audio and text\)"):
        model.encode_image([np.zeros((8, 8, 3), np.uint8)])
    with pytest.raises(ValueError, match="has no image tower"):
        model.similarity([], TEXTS)
    with pytest.raises(ValueError, match="audio clip 1: expected a non-empty"):
        model.encode_audio([_waves((0.5,))[0], np.zeros(0, np.float32)])
    with pytest.raises(ValueError, match="empty text"):
        model.encode_text(["a cat", " "])


def _one_line(err) -> str:
    message = str(err.value)
    assert "\n" not in message
    return message


def test_missing_or_damaged_models_fail_in_one_line(clap, tmp_path, monkeypatch):
    with pytest.raises(CheckpointError) as err:
        polymodal.load(tmp_path / "nope")
    assert "no such checkpoint directory" in _one_line(err)
    with pytest.raises(CheckpointError) as err:
        load_clap(str(tmp_path / "nope"))
    assert "no such CLAP model directory" in _one_line(err)
    damaged = tmp_path / "damaged"
    shutil.copytree(clap[0], damaged)
    (damaged / "model.safetensors").write_bytes((damaged / "model.safetensors").read_bytes()[:1000])
    with pytest.raises(CheckpointError) as err:
        polymodal.load(damaged)
    assert str(damaged) in _one_line(err)
    (damaged / "model.safetensors").unlink()
    with pytest.raises(CheckpointError) as err:
        polymodal.load(damaged)
    assert "not a complete Hugging Face model directory" in _one_line(err)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(CheckpointError) as err:
        load_clap("laion/clap-htsat-unfused")
    assert "hf:laion/clap-htsat-unfused: not in the Hugging Face cache" in _one_line(err)


def test_hf_id_loads_clap_from_the_cache_offline(clap, tmp_path, monkeypatch):
    """`hf:<repo id>` whose config says clap resolves to the CLAP backend (the hub cache's layout)."""
    import huggingface_hub.constants as constants

    commit = "0" * 40
    repo = tmp_path / "hub" / "models--polymodal--tiny-clap"
    shutil.copytree(clap[0], repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    model = polymodal.load("hf:polymodal/tiny-clap")
    assert isinstance(model, ClapBackend) and model.model_id == "hf:polymodal/tiny-clap"
    local = polymodal.load(clap[0])
    assert torch.equal(model.encode_audio(_waves()), local.encode_audio(_waves()))
    assert torch.equal(model.encode_text(TEXTS), local.encode_text(TEXTS))
