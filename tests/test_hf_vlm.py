"""Pretrained Hugging Face vision-language models (BLIP, LLaVA, Idefics3, SmolVLM) on tiny random models
saved in transformers' own format: captions and chat answers through `polymodal.load` are
transformers' own `generate` output token for token, the stream concatenates to the answer, the
GenerationConfig's settings reach generate, and a model that is not there fails in one line."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from backend_fixtures import make_hf_model
from PIL import Image
from typer.testing import CliRunner

import polymodal
from polymodal.backends.hf import HFModel
from polymodal.backends.hf_vlm import CAPTION_PROMPT, HFCaptioner, HFChatModel, is_hf_vlm
from polymodal.cli import app
from polymodal.errors import CheckpointError, ConversationError
from polymodal.models.generative import GenerationConfig

# "café" and "naïve" put two-byte characters into the byte-level vocabulary, so random answers
# hold unfinished UTF-8 characters mid-stream.
CORPUS = ["a red circle left of a blue square", "what colour is the shape above the star?",
          "how many objects are there? two", "the green triangle is below the yellow cross",
          "a naïve café near the grey pentagon"] * 4
LLAVA_TEMPLATE = (
    "{% for m in messages %}{{ m['role'].upper() }}: {% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<image>\n{% else %}{{ c['text'] }}{% endif %}{% endfor %}"
    "{% if m['role'] == 'assistant' %}</s>{% endif %} {% endfor %}{% if add_generation_prompt %}ASSISTANT:{% endif %}")
IDEFICS_TEMPLATE = (
    "<|im_start|>{% for m in messages %}{{ m['role'] | capitalize }}:{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<image>{% else %} {{ c['text'] }}{% endif %}{% endfor %}<end_of_utterance>\n"
    "{% endfor %}{% if add_generation_prompt %}Assistant:{% endif %}")
WIDE = 0.5  # initialiser std: large enough that different images give different random answers
MESSAGES = [{"role": "user", "content": "what colour is the circle?"}, {"role": "assistant", "content": "red"},
            {"role": "user", "content": "and the square?"}]


def bpe_tokenizer(specials: list[str], **roles):
    """A byte-level BPE trained here on CORPUS, as a transformers fast tokenizer (ids 0.. are `specials`)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=160, special_tokens=specials, show_progress=False))
    return PreTrainedTokenizerFast(tokenizer_object=tok, **roles)


def tiny_text(vocab: int, **ids) -> dict:
    return dict(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                initializer_range=WIDE, **ids)


def tiny_vision(**extra) -> dict:
    return dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=32,
                patch_size=8, initializer_range=WIDE, **extra)


def save_blip(directory):
    from transformers import BlipConfig, BlipForConditionalGeneration, BlipImageProcessor, BlipProcessor

    tok = bpe_tokenizer(["<pad>", "<s>", "</s>"], pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                        sep_token="</s>")
    text = tiny_text(len(tok), max_position_embeddings=64, bos_token_id=1, sep_token_id=2, eos_token_id=2,
                     pad_token_id=0, encoder_hidden_size=32)
    torch.manual_seed(0)
    model = BlipForConditionalGeneration(BlipConfig(vision_config=tiny_vision(), text_config=text,
                                                    projection_dim=32, initializer_range=WIDE))
    model.save_pretrained(directory)
    BlipProcessor(BlipImageProcessor(size={"height": 32, "width": 32}), tok).save_pretrained(directory)


def save_llava(directory):
    from transformers import CLIPImageProcessor, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

    tok = bpe_tokenizer(["<pad>", "<s>", "</s>", "<image>"], pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                        extra_special_tokens={"image_token": "<image>"})
    text = tiny_text(len(tok), model_type="llama", num_key_value_heads=2, max_position_embeddings=128,
                     bos_token_id=1, eos_token_id=2, pad_token_id=0)
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(LlavaConfig(
        vision_config=tiny_vision(model_type="clip_vision_model", projection_dim=32), text_config=text,
        image_token_index=3, vision_feature_select_strategy="default", vision_feature_layer=-1))
    model.save_pretrained(directory)
    images = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    LlavaProcessor(images, tok, patch_size=8, vision_feature_select_strategy="default", num_additional_image_tokens=1,
                   chat_template=LLAVA_TEMPLATE).save_pretrained(directory)


def save_idefics3(directory, smol: bool = False):
    """Idefics3, or SmolVLM (its processor also takes videos and needs num2words)."""
    import transformers as tf

    specials = ["<pad>", "<|im_start|>", "<end_of_utterance>", "<image>", "<fake_token_around_image>", "<global-img>"]
    tok = bpe_tokenizer(specials, pad_token="<pad>", bos_token="<|im_start|>", eos_token="<end_of_utterance>")
    text = tiny_text(len(tok), model_type="llama", num_key_value_heads=2, max_position_embeddings=256,
                     bos_token_id=1, eos_token_id=2, pad_token_id=0)
    name = "SmolVLM" if smol else "Idefics3"
    torch.manual_seed(0)
    config = getattr(tf, f"{name}Config")(vision_config=tiny_vision(), text_config=text, image_token_id=3,
                                          scale_factor=2)
    getattr(tf, f"{name}ForConditionalGeneration")(config).save_pretrained(directory)
    images = getattr(tf, f"{name}ImageProcessor")(do_image_splitting=False, size={"longest_edge": 32},
                                                  max_image_size={"longest_edge": 32})
    videos = {"video_processor": tf.SmolVLMVideoProcessor()} if smol else {}
    # (32 / 8) ** 2 patches merged 2 x 2 by the connector: 4 image tokens
    getattr(tf, f"{name}Processor")(image_processor=images, tokenizer=tok, image_seq_len=4,
                                    chat_template=IDEFICS_TEMPLATE, **videos).save_pretrained(directory)


SAVERS = {"blip": save_blip, "llava": save_llava, "idefics3": save_idefics3,
          "smolvlm": lambda directory: save_idefics3(directory, smol=True)}


@pytest.fixture(scope="session")
def vlm_dirs(tmp_path_factory):
    dirs = {}
    for family, save in SAVERS.items():
        dirs[family] = tmp_path_factory.mktemp(family)
        save(dirs[family])
    return dirs


def reference(directory):
    """transformers' own processor and model, loaded without polymodal."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    return AutoProcessor.from_pretrained(directory), AutoModelForImageTextToText.from_pretrained(directory).eval()


def images(n=3):
    """Odd sizes and aspect ratios, so the processors resize."""
    rng = np.random.RandomState(0)
    return [Image.fromarray(rng.randint(0, 256, (37 + 13 * i, 50 + 7 * i, 3), dtype=np.uint8)) for i in range(n)]


def until(row: list[int], eos: int) -> list[int]:
    return row[: row.index(eos)] if eos in row else row


def structured(messages):
    """MESSAGES as chat templates take them, the image first in the first turn (written out here)."""
    out = [{"role": m["role"], "content": [{"type": "text", "text": m["content"]}]} for m in messages]
    out[0]["content"].insert(0, {"type": "image"})
    return out


@pytest.mark.parametrize("beams", [1, 3])
def test_blip_captions_are_transformers_generate(vlm_dirs, beams):
    model = polymodal.load(vlm_dirs["blip"])
    assert isinstance(model, HFCaptioner) and not hasattr(model, "chat")
    assert model.model_id == f"hf:{vlm_dirs['blip'].resolve()}"
    processor, ref = reference(vlm_dirs["blip"])
    config = GenerationConfig(max_new_tokens=10, num_beams=beams)
    out = ref.generate(**processor(images=images(), return_tensors="pt"), max_new_tokens=10, num_beams=beams,
                       do_sample=False)
    expected = [until(row[1:], 2) for row in out.tolist()]  # BLIP's rows start with its start token
    assert model.generate_tokens(model.caption_inputs(images()), config).tokens == expected
    captions = model.caption(images(), config)
    assert captions == [processor.decode(row, skip_special_tokens=True).strip() for row in expected]
    assert len(set(captions)) == 3  # the image reaches the decoder
    if beams > 1:
        return
    pixels = torch.from_numpy(np.stack([np.asarray(im.resize((32, 32))) for im in images()])).permute(0, 3, 1, 2)
    assert model.caption(pixels, config) == model.caption([im.resize((32, 32)) for im in images()], config)


@pytest.mark.parametrize("family", ["llava", "idefics3", "smolvlm"])
def test_chat_answers_are_transformers_generate_and_the_stream_concatenates_to_them(vlm_dirs, family):
    model = polymodal.load(vlm_dirs[family])
    assert isinstance(model, HFChatModel)
    processor, ref = reference(vlm_dirs[family])
    answers = []
    for picture in images(2):
        prompt = processor.apply_chat_template(structured(MESSAGES), add_generation_prompt=True)
        inputs = processor(images=[picture], text=[prompt], return_tensors="pt")
        out = ref.generate(**inputs, max_new_tokens=12, do_sample=False)[0, inputs["input_ids"].shape[1]:]
        expected = until(out.tolist(), 2)
        config = GenerationConfig(max_new_tokens=12)
        got = model.generate_tokens(model.chat_inputs([picture], [MESSAGES]), config)
        assert got.tokens == [expected]
        answer = model.chat(picture, MESSAGES, config)
        assert answer == processor.decode(expected, skip_special_tokens=True).strip()
        pieces = list(model.chat_stream(picture, MESSAGES, config))
        assert "".join(pieces) == answer and len(pieces) > 1
        answers.append(answer)
    assert answers[0] != answers[1]


@pytest.mark.parametrize("family", ["llava", "idefics3"])
def test_chat_models_caption_a_batch_as_transformers_generates_it(vlm_dirs, family):
    model = polymodal.load(vlm_dirs[family])
    processor, ref = reference(vlm_dirs[family])
    processor.tokenizer.padding_side = "left"
    prompt = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": CAPTION_PROMPT}]}]
    text = processor.apply_chat_template(prompt, add_generation_prompt=True)
    inputs = processor(images=[[im] for im in images(2)], text=[text] * 2, padding=True, return_tensors="pt")
    out = ref.generate(**inputs, max_new_tokens=8, do_sample=False)[:, inputs["input_ids"].shape[1]:]
    expected = [processor.decode(until(row, 2), skip_special_tokens=True).strip() for row in out.tolist()]
    assert model.caption(images(2), GenerationConfig(max_new_tokens=8)) == expected


def test_sampling_settings_reach_generate_and_leave_the_global_seed_alone(vlm_dirs):
    model = polymodal.load(vlm_dirs["llava"])
    processor, ref = reference(vlm_dirs["llava"])
    picture = images(1)[0]
    config = GenerationConfig(max_new_tokens=12, do_sample=True, temperature=1.5, top_k=20, top_p=0.9, seed=7)
    inputs = processor(images=[picture], text=[processor.apply_chat_template(structured(MESSAGES),
                                                                             add_generation_prompt=True)],
                       return_tensors="pt")
    torch.manual_seed(7)
    out = ref.generate(**inputs, max_new_tokens=12, do_sample=True, temperature=1.5, top_k=20, top_p=0.9)
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    got = model.generate_tokens(model.chat_inputs([picture], [MESSAGES]), config).tokens[0]
    assert got == until(out[0, inputs["input_ids"].shape[1]:].tolist(), 2)
    assert torch.equal(torch.random.get_rng_state(), before)
    greedy = model.chat(picture, MESSAGES, GenerationConfig(max_new_tokens=12))
    assert model.chat(picture, MESSAGES, config) != greedy  # hot sampling leaves the greedy path


def test_stop_sequences_of_ids_and_strings_end_the_answer_and_are_removed(vlm_dirs):
    model = polymodal.load(vlm_dirs["idefics3"])
    picture = images(1)[0]
    full = model.generate_tokens(model.chat_inputs([picture], [MESSAGES]), GenerationConfig(max_new_tokens=12))
    tokens = full.tokens[0]
    assert len(tokens) == 12 and full.finish_reasons == ["length"]
    by_ids = GenerationConfig(max_new_tokens=12, stop_sequences=[tokens[4:6]])
    cut = model.generate_tokens(model.chat_inputs([picture], [MESSAGES]), by_ids)
    first = next(i for i in range(len(tokens) - 1) if tokens[i:i + 2] == tokens[4:6])
    assert cut.tokens == [tokens[:first]] and cut.finish_reasons == ["stop"]
    assert "".join(model.chat_stream(picture, MESSAGES, by_ids)) == model.chat(picture, MESSAGES, by_ids)
    text = model.chat(picture, MESSAGES, GenerationConfig(max_new_tokens=12))
    word = next(text[i:i + 2] for i in range(2, len(text)) if text[i:i + 2].isascii() and text[i:i + 2].isalpha())
    expected = text[: text.index(word)].strip()
    assert model.chat(picture, MESSAGES, GenerationConfig(max_new_tokens=12), stop=[word]) == expected
    assert "".join(model.chat_stream(picture, MESSAGES, GenerationConfig(max_new_tokens=12), stop=[word])) == expected


def test_bad_conversations_are_refused_in_one_line(vlm_dirs):
    model = polymodal.load(vlm_dirs["llava"])
    picture = images(1)[0]
    with pytest.raises(ConversationError, match="end with a user turn"):
        model.chat(picture, MESSAGES[:2])
    with pytest.raises(ConversationError, match="question is empty"):
        model.chat_stream(picture, [{"role": "user", "content": "  "}])
    with pytest.raises(ConversationError, match="too long"):
        model.chat(picture, [{"role": "user", "content": "the red circle " * 60}])
    with pytest.raises(ValueError, match="beam search cannot stream"):
        model.chat_stream(picture, MESSAGES, GenerationConfig(num_beams=2))


def test_caption_run_on_a_blip_directory(vlm_dirs, tmp_path):
    picture = tmp_path / "picture.png"
    images(1)[0].save(picture)
    result = CliRunner().invoke(app, ["caption", "run", str(picture), "--model", str(vlm_dirs["blip"]), "--json",
                                      "--max-tokens", "6"])
    assert result.exit_code == 0, result.output
    line = json.loads(result.stdout.strip())
    expected = polymodal.load(vlm_dirs["blip"]).caption([Image.open(picture)], GenerationConfig(max_new_tokens=6))
    assert line == {"image": str(picture), "caption": expected[0]}


def test_missing_broken_and_other_models_fail_in_one_line(vlm_dirs, tmp_path, monkeypatch):
    broken = tmp_path / "broken"
    broken.mkdir()
    shutil.copy(vlm_dirs["llava"] / "config.json", broken)  # no weights, no processor
    with pytest.raises(CheckpointError, match="not a complete Hugging Face model directory") as err:
        polymodal.load(broken)
    assert "\n" not in str(err.value)
    make_hf_model(tmp_path / "clip")  # CLIP still loads as an embedding model
    assert not is_hf_vlm(tmp_path / "clip") and isinstance(polymodal.load(tmp_path / "clip"), HFModel)
    other = tmp_path / "bert"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "bert"}))
    assert not is_hf_vlm(other)
    with pytest.raises(CheckpointError):
        polymodal.load(other)
    result = CliRunner().invoke(app, ["caption", "run", "x.png", "--model", str(broken)])
    assert result.exit_code != 0 and isinstance(result.exception, CheckpointError)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(CheckpointError, match="hf:Salesforce/blip-image-captioning-base: not in the .* cache"):
        polymodal.load("hf:Salesforce/blip-image-captioning-base")


def test_hf_ids_load_from_the_cache_offline(vlm_dirs, tmp_path, monkeypatch):
    """A repo id in the hub cache's layout (models--org--name/snapshots/<commit>) loads with no network."""
    import huggingface_hub.constants as constants

    commit = "0" * 40
    repo = tmp_path / "hub" / "models--polymodal--tiny-llava"
    shutil.copytree(vlm_dirs["llava"], repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    model = polymodal.load("hf:polymodal/tiny-llava")
    assert isinstance(model, HFChatModel) and model.model_id == "hf:polymodal/tiny-llava"
    local = polymodal.load(vlm_dirs["llava"])
    config = GenerationConfig(max_new_tokens=6)
    assert model.chat(images(1)[0], MESSAGES, config) == local.chat(images(1)[0], MESSAGES, config)
