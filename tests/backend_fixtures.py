"""Tiny random-initialised models in each native format (nothing is downloaded)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

BASE_WORDS = "a an the photo of cat dog two and".split()


def save_word_tokenizer(directory: Path, words: list[str]) -> int:
    """A word-level tokenizer saved as a transformers fast tokenizer; returns the vocabulary size."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["<pad>", "<unk>", "<bos>", "<eos>"] + sorted(set(BASE_WORDS + words)))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A <eos>",
                                                       special_tokens=[("<bos>", 2), ("<eos>", 3)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>",
                                   bos_token="<bos>", eos_token="<eos>")
    fast.save_pretrained(str(directory))
    return len(vocab)


def make_hf_model(directory: Path, kind: str = "clip", words: list[str] = (), width: int = 32,
                  image_size: int = 32, seed: int = 0):
    """A tiny CLIPModel / SiglipModel saved with save_pretrained (plus tokenizer and image processor)."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, SiglipConfig, SiglipImageProcessor, SiglipModel

    torch.manual_seed(seed)
    vocab = save_word_tokenizer(directory, list(words))
    text = dict(vocab_size=vocab, hidden_size=width, intermediate_size=2 * width, num_hidden_layers=2,
                num_attention_heads=4, max_position_embeddings=48, bos_token_id=2, eos_token_id=3, pad_token_id=0)
    vision = dict(hidden_size=width, intermediate_size=2 * width, num_hidden_layers=2, num_attention_heads=4,
                  image_size=image_size, patch_size=8)
    if kind == "clip":
        model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=24))
        processor = CLIPImageProcessor(size={"shortest_edge": image_size},
                                       crop_size={"height": image_size, "width": image_size})
    else:
        model = SiglipModel(SiglipConfig(text_config=text, vision_config=vision))
        processor = SiglipImageProcessor(size={"height": image_size, "width": image_size})
    model.save_pretrained(str(directory))
    processor.save_pretrained(str(directory))
    return model.eval()


OPEN_CLIP_ARCH = "polymodal-test-tiny"


def register_open_clip_arch(directory: Path) -> str:
    """A tiny open_clip architecture, registered with open_clip.add_model_config."""
    import open_clip

    cfg = {"embed_dim": 24,
           "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "patch_size": 8, "head_width": 8},
           "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 4, "layers": 2}}
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{OPEN_CLIP_ARCH}.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(directory)
    return OPEN_CLIP_ARCH


def make_open_clip_checkpoint(directory: Path, seed: int = 0):
    """The tiny open_clip model with random weights, saved as a state-dict file; returns (model, preprocess, file)."""
    import open_clip

    arch = register_open_clip_arch(directory / "configs")
    torch.manual_seed(seed)
    model, _, preprocess = open_clip.create_model_and_transforms(arch)
    file = directory / "tiny.pt"
    torch.save(model.state_dict(), file)
    return model.eval(), preprocess, file


def save_byte_bpe_tokenizer(directory: Path) -> int:
    """A tiny RoBERTa (byte-level BPE) tokenizer from a hand-written vocab.json / merges.txt:
    the byte alphabet, a few merges, RoBERTa's special tokens (<pad> = 1); returns the vocabulary size."""
    from transformers import RobertaTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    merges = ["Ġ a", "Ġ t", "h e", "Ġt he", "o g", "a t", "Ġ d", "Ġd og"]
    tokens = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"] + sorted(bytes_to_unicode().values())
    vocab = {t: i for i, t in enumerate(tokens + ["".join(m.split()) for m in merges])}
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "vocab.json").write_text(json.dumps(vocab))
    (directory / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    tok = RobertaTokenizer(vocab=str(directory / "vocab.json"), merges=str(directory / "merges.txt"))
    tok.save_pretrained(str(directory))
    return len(vocab)


def make_clap_model(directory: Path, fusion: bool = False, seed: int = 0):
    """A tiny ClapModel (RoBERTa text tower, HTSAT audio tower) saved with save_pretrained beside its
    ClapProcessor; returns (model, processor). Unfused: 16 mel bands over 2 s clips (the smallest
    HTSAT input); fused: the extractor's fusion path needs 64 bands, so 1 s clips keep it small."""
    from transformers import ClapConfig, ClapFeatureExtractor, ClapModel, ClapProcessor, RobertaTokenizer

    torch.manual_seed(seed)
    vocab = save_byte_bpe_tokenizer(directory)
    bands, seconds = (64, 1) if fusion else (16, 2)
    text = dict(vocab_size=vocab, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                max_position_embeddings=40)
    # spec_size = 4 x mel bands; the last stage's width (hidden_size) is patch_embeds_hidden_size x 2 ** (stages - 1)
    audio = dict(num_mel_bins=bands, spec_size=4 * bands, window_size=4, patch_embeds_hidden_size=8, depths=[1, 1],
                 num_attention_heads=[1, 2], hidden_size=16, enable_fusion=fusion,
                 fusion_type="aff_2d" if fusion else None)
    model = ClapModel(ClapConfig(text_config=text, audio_config=audio, projection_dim=12))
    extractor = ClapFeatureExtractor(feature_size=bands, max_length_s=seconds,
                                     truncation="fusion" if fusion else "rand_trunc")
    processor = ClapProcessor(feature_extractor=extractor, tokenizer=RobertaTokenizer.from_pretrained(str(directory)))
    model.save_pretrained(str(directory))
    processor.save_pretrained(str(directory))
    return model.eval(), processor
