"""An image-grounded chat model, LLaVA style: polymodal's image tower (its region tokens, with a
learnt position per region) -> an MLP projector into the language model's embedding space ->
a decoder-only `transformers` language model that reads the projected tokens as a prefix.

    model = create_chat_model("shapes-chat-small", texts)          # LM built from a config, untrained
    model = create_chat_model("shapes-chat-small", texts, language_model="path/to/hf-lm")  # a real LM
    model.chat(image, [{"role": "user", "content": "what colour is the circle?"}])
    save_chat_model(model, "runs/chat"); model = load_chat_model("runs/chat")

Chat template (token ids, one conversation per image):

    <image> <|user|> question <|assistant|> answer <|end|> <|user|> ... <|assistant|>

`<image>` is the placeholder of the image: it is always the first token, and the model puts the
image's P projected region tokens in its place (so a sequence of L text tokens is P + L - 1 long
inside the LM). With a question encoder (`question_encoder: "minilm"`) a user turn's text is
`<|piece|>` once per encoder state, and the LM reads the projected states there instead of token
embeddings. Generation stops at `<|end|>`. Training targets are the assistant tokens and
their `<|end|>` only (`chat_targets`); every other position is IGNORE.

The tokenizer is a `tokenizers.Tokenizer`: polymodal's WordPiece trained on the dataset's text
for a language model built here, or the LM directory's own (`tokenizer.json`) for a user's LM;
the template's special tokens are added to it and the LM's embeddings resized to match.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_model, save_model
from tokenizers import AddedToken, Tokenizer as HFTokenizer, processors
from torch import nn

from ...config import ImageTowerConfig, image_tower_config, replace_fields
from ...errors import CheckpointError, ConversationError
from ...modalities.image import ImageNormalize, build_image_tower, resize_and_crop
from ...modalities.text import Tokenizer
from ...utils import atomic_path, write_json
from .decoding import GenerationConfig, HFCausalLM, generate, left_pad, stream
from .turn_reader import TurnReader

IMAGE, USER, ASSISTANT, END, PAD = "<image>", "<|user|>", "<|assistant|>", "<|end|>", "<|pad|>"
PIECE = "<|piece|>"  # with a question encoder: the place of one encoder state of a user turn
SPECIAL_TOKENS = (IMAGE, USER, ASSISTANT, END, PAD, PIECE)
IGNORE = -100  # targets outside the assistant's turns: skipped by the cross-entropy
CAPTION_PROMPT = "describe the image."  # the user turn of stage-1 (caption) conversations


@dataclass
class ChatConfig:
    image: ImageTowerConfig = field(default_factory=lambda: ImageTowerConfig(
        kind="cnn", image_size=64, width=32, layers=4, pool="coord"))
    lm_type: str = "gpt2"  # "gpt2" or "llama": the architecture built here (ignored with language_model)
    width: int = 128  # LM width
    layers: int = 2  # LM blocks
    heads: int = 4
    vocab_size: int = 512  # upper bound for the tokenizer trained on the dataset's text
    context_length: int = 160  # LM positions: image tokens + the conversation's tokens
    merge: int = 2  # each merge x merge block of regions becomes one LM token (fewer tokens, same detail)
    # how the LM reads the image: "prefix", projected tokens before the text (LLaVA), or "cross",
    # every LM block cross-attending to them (Flamingo; GPT-2's own cross-attention layers)
    connector: str = "prefix"
    language_model: str | None = None  # a local Hugging Face causal-LM directory instead of building one
    # "minilm": the user's turns are read by the bundled MiniLM (frozen; turn_reader.py), not by the
    # LM's own token embeddings, so that wordings training never used keep their meaning
    question_encoder: str | None = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ChatConfig:
        data = dict(data)
        return replace_fields(cls(image=image_tower_config(data.pop("image", {}))), data)


PRESETS = {
    # cross-attention: at equal steps it grounds answers better than the prefix here (benchmarks/README.md)
    "shapes-chat-small": ChatConfig(connector="cross"),
    "shapes-chat-prefix": ChatConfig(),
    "shapes-chat-minilm": ChatConfig(connector="cross", question_encoder="minilm"),
    "shapes-chat-tiny": ChatConfig(image=ImageTowerConfig(kind="cnn", image_size=64, width=16, layers=3,
                                                          pool="coord"), width=64, layers=1, context_length=128),
}


def get_chat_config(name: str) -> ChatConfig:
    """A preset by name, or a JSON file of ChatConfig fields by path."""
    path = Path(name)
    if path.suffix == ".json" and path.is_file():
        return ChatConfig.from_dict(json.loads(path.read_text()))
    if name not in PRESETS:
        raise ValueError(f"unknown chat model '{name}' (known: {', '.join(PRESETS)})")
    return PRESETS[name]


# ----------------------------------------------------------------------------------------------
# Tokenizer and language model


def train_chat_tokenizer(texts: Sequence[str], vocab_size: int) -> HFTokenizer:
    """polymodal's WordPiece trained on `texts`, without its [CLS]/[SEP] wrapping."""
    tok = Tokenizer.train(texts, vocab_size, context_length=10_000).tok
    tok.post_processor = processors.TemplateProcessing(single="$A", special_tokens=[])
    tok.no_truncation()
    return tok


def with_template_tokens(tok: HFTokenizer) -> HFTokenizer:
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    return tok


def build_language_model(config: ChatConfig, tok: HFTokenizer):
    """A randomly initialised GPT-2 or Llama at the config's size (no weights: trained here)."""
    from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig

    vocab_size, end, pad = tok.get_vocab_size(), tok.token_to_id(END), tok.token_to_id(PAD)
    ids = {"bos_token_id": end, "eos_token_id": end, "pad_token_id": pad}
    if config.lm_type == "gpt2":
        hf = GPT2Config(vocab_size=vocab_size, n_positions=config.context_length, n_embd=config.width,
                        n_layer=config.layers, n_head=config.heads, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                        add_cross_attention=config.connector == "cross", **ids)
    elif config.connector == "cross":
        raise ValueError("connector 'cross' needs lm_type 'gpt2' (Llama has no cross-attention layers)")
    elif config.lm_type == "llama":
        hf = LlamaConfig(vocab_size=vocab_size, hidden_size=config.width, intermediate_size=4 * config.width,
                         num_hidden_layers=config.layers, num_attention_heads=config.heads,
                         max_position_embeddings=config.context_length, tie_word_embeddings=True, **ids)
    else:
        raise ValueError(f"unknown lm_type '{config.lm_type}' (known: gpt2, llama)")
    return AutoModelForCausalLM.from_config(hf)


def language_model_from_dict(hf_config: dict):
    """The LM architecture a checkpoint's config.json records (weights come from the checkpoint)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    hf_config = dict(hf_config)
    return AutoModelForCausalLM.from_config(AutoConfig.for_model(hf_config.pop("model_type"), **hf_config))


def load_user_language_model(directory: str | Path):
    """A local Hugging Face causal-LM directory: its model and its own tokenizer.json."""
    from transformers import AutoModelForCausalLM

    directory = Path(directory)
    if not (directory / "config.json").is_file():
        raise CheckpointError(f"{directory}: not a Hugging Face model directory (no config.json)")
    if not (directory / "tokenizer.json").is_file():
        raise CheckpointError(f"{directory}: the language model has no tokenizer.json (a fast tokenizer is needed)")
    return AutoModelForCausalLM.from_pretrained(directory), HFTokenizer.from_file(str(directory / "tokenizer.json"))


def _grid_side(tower: nn.Module, cfg: ImageTowerConfig) -> int:
    return getattr(tower, "grid", None) or cfg.image_size // cfg.patch_size  # CNN: its output grid


def merge_regions(tokens: torch.Tensor, side: int, merge: int) -> torch.Tensor:
    """(B, side * side, C) region tokens -> (B, (side / merge) ** 2, merge * merge * C): each
    merge x merge block concatenated into one token (the "pixel shuffle" of SmolVLM/Idefics3), so
    the LM reads merge**2 fewer image tokens without losing what each region holds."""
    b, _, c = tokens.shape
    g = side // merge
    blocks = tokens.reshape(b, g, merge, g, merge, c).permute(0, 1, 3, 2, 4, 5)  # (B, g, g, m, m, C)
    return blocks.reshape(b, g * g, merge * merge * c)


# ----------------------------------------------------------------------------------------------
# The model


class ImageConditionedLM:
    """A `CausalLM` (decoding.py's protocol) over an HF causal LM and one image's projected tokens
    (B, P, D) per row; beam search's row reordering moves the image tokens with the cache.
    `prompt_embeds` (B, T, D), where given, are what the first call reads instead of embedding
    the prompt's ids (a question encoder's states in the user turns)."""

    def __init__(self, language_model, image_tokens: torch.Tensor, prompt_embeds: torch.Tensor | None = None):
        self.hf, self.image_tokens, self.prompt_embeds = HFCausalLM(language_model), image_tokens, prompt_embeds

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """Input embeddings (B, T, D) of a call without a cache: the prompt's given embeddings, then
        (uncached decoding feeds the whole sequence) the generated tokens' own."""
        table = self.hf.model.get_input_embeddings()
        if self.prompt_embeds is None:
            return table(ids)
        given = self.prompt_embeds.shape[1]
        return torch.cat([self.prompt_embeds.to(table.weight.dtype), table(ids[:, given:])], 1)

    @property
    def device(self) -> torch.device:
        return self.image_tokens.device

    def reorder_cache(self, cache, index):
        self.image_tokens = self.image_tokens.index_select(0, index)
        return self.hf.reorder_cache(cache, index)


class ImagePrefixedLM(ImageConditionedLM):
    """Sequences start with the image tokens: the first call embeds them before the prompt's
    tokens; later calls find them in the cache. Masks and positions count them in."""

    def __call__(self, ids, attention_mask, positions, cache=None, use_cache=True):
        b, p = self.image_tokens.shape[:2]
        mask = torch.cat([attention_mask.new_ones(b, p), attention_mask], 1).long()  # (B, P + T_past + T)
        positions = positions + p
        inputs = {"input_ids": ids}
        if cache is None:  # the first call: the image prefix goes in front
            embeds = self.embed(ids)  # (B, T, D)
            inputs = {"inputs_embeds": torch.cat([self.image_tokens.to(embeds.dtype), embeds], 1)}  # (B, P + T, D)
            positions = torch.cat([torch.arange(p, device=ids.device).expand(b, p), positions], 1)
        out = self.hf.model(**inputs, attention_mask=mask, position_ids=positions, use_cache=use_cache,
                            **{self.hf.cache_arg: cache})
        logits = out.logits if cache is not None else out.logits[:, p:]  # (B, T, V): the prompt's own
        return logits, getattr(out, self.hf.cache_arg)


class ImageCrossLM(ImageConditionedLM):
    """An LM with cross-attention layers (GPT-2's `add_cross_attention`) reading the image
    tokens as its `encoder_hidden_states`."""

    def __call__(self, ids, attention_mask, positions, cache=None, use_cache=True):
        inputs = {"inputs_embeds": self.embed(ids)} if cache is None else {"input_ids": ids}
        out = self.hf.model(**inputs, attention_mask=attention_mask.long(), position_ids=positions,
                            encoder_hidden_states=self.image_tokens, use_cache=use_cache,
                            **{self.hf.cache_arg: cache})
        return out.logits, getattr(out, self.hf.cache_arg)


class ChatModel(nn.Module):
    def __init__(self, config: ChatConfig, tokenizer: HFTokenizer, language_model):
        super().__init__()
        self.config, self.tokenizer, self.language_model = config, tokenizer, language_model
        self.normalize = ImageNormalize(config.image.mean, config.image.std)
        self.image_tower = build_image_tower(config.image)
        width, lm_width = self.image_tower.width, language_model.get_input_embeddings().embedding_dim
        self.grid = _grid_side(self.image_tower, config.image)
        if self.grid % config.merge:
            raise ValueError(f"merge {config.merge} does not divide the image tower's {self.grid}x{self.grid} grid")
        self.region_pos = nn.Parameter(torch.randn(1, self.grid ** 2, width) * 0.02)
        merged = width * config.merge ** 2
        self.projector = nn.Sequential(nn.LayerNorm(merged), nn.Linear(merged, lm_width), nn.GELU(),
                                       nn.Linear(lm_width, lm_width))
        self.ids = {t: tokenizer.token_to_id(t) for t in SPECIAL_TOKENS}
        self.turn_reader = _turn_reader(config, lm_width)
        if self.turn_reader is not None and self.ids[PIECE] is None:
            raise CheckpointError(f"the tokenizer has no {PIECE} token for the question encoder")
        lm_config = language_model.config
        self.max_positions = getattr(lm_config, "n_positions", None) or lm_config.max_position_embeddings

    @property
    def device(self) -> torch.device:
        return self.region_pos.device

    @property
    def image_token_count(self) -> int:
        return (self.grid // self.config.merge) ** 2

    @property
    def prefix_length(self) -> int:
        """LM positions the image takes: its tokens as a prefix, none when cross-attended to."""
        return self.image_token_count if self.config.connector == "prefix" else 0

    def bind(self, images: torch.Tensor, prompt_embeds: torch.Tensor | None = None):
        """The LM conditioned on `images` (B, 3, S, S), as decoding.py's `CausalLM`; `prompt_embeds`
        (B, T, D): the left-padded prompts' input embeddings, where a question encoder reads the user
        turns (`bind_prompts` makes them)."""
        image_tokens = self.image_prefix(images)  # (B, P, D)
        wrapper = ImageCrossLM if self.config.connector == "cross" else ImagePrefixedLM
        return wrapper(self.language_model, image_tokens, prompt_embeds)

    def embed(self, ids: torch.Tensor, turns: Sequence[Sequence[str]] | None = None) -> torch.Tensor:
        """ids (B, L) -> the LM's input embeddings (B, L, D); with a question encoder, its projected
        states of each row's user turns (`turns[b]`, in order) at the <|piece|> places."""
        embeds = self.language_model.get_input_embeddings()(ids)
        if self.turn_reader is None:
            return embeds
        if turns is None:
            raise ValueError("this model reads the user's turns with its question encoder: pass each row's turns")
        slots = ids == self.ids[PIECE]  # (B, L)
        read = self.turn_reader(slots, turns).to(embeds.dtype)  # (N slots, D)
        return embeds.masked_scatter(slots[..., None], read)

    def image_prefix(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 or [0, 1] images (B, 3, S, S) -> projected region tokens (B, P, D_lm)."""
        tokens = self.image_tower(self.normalize(images.to(self.device))).tokens  # (B, grid * grid, C)
        return self.projector(merge_regions(tokens + self.region_pos, self.grid, self.config.merge))  # (B, P, D)

    def forward(self, images: torch.Tensor, ids: torch.Tensor, labels: torch.Tensor,
                turns: Sequence[Sequence[str]] | None = None) -> dict[str, torch.Tensor]:
        """images (B, 3, S, S); ids (B, L) rendered conversations, `<image>` first, right-padded with
        <|pad|>; labels (B, L) the ids at assistant tokens, IGNORE elsewhere; turns: each row's
        user turns (`user_turns`), for a question encoder ->
        {"logits": (B, L-1, V), "targets": (B, L-1)}: each position predicts the next token."""
        ids, labels = ids.to(self.device), labels.to(self.device)
        prefix = self.image_prefix(images)  # (B, P, D)
        embeds = self.embed(ids, turns)  # (B, L, D)
        if self.config.connector == "cross":  # `<image>` stays a token; the blocks attend to the image
            logits = self.language_model(inputs_embeds=embeds, attention_mask=(ids != self.ids[PAD]).long(),
                                         encoder_hidden_states=prefix, use_cache=False).logits
            return {"logits": logits[:, :-1], "targets": labels[:, 1:]}
        b, p = prefix.shape[:2]
        embeds = torch.cat([prefix, embeds[:, 1:]], 1)  # (B, P+L-1, D)
        mask = torch.cat([ids.new_ones(b, p), (ids[:, 1:] != self.ids[PAD]).long()], 1)
        positions = torch.arange(embeds.shape[1], device=self.device).expand(b, -1)
        logits = self.language_model(inputs_embeds=embeds, attention_mask=mask, position_ids=positions,
                                     use_cache=False).logits
        return {"logits": logits[:, p - 1:-1], "targets": labels[:, 1:]}

    # -- the chat template ------------------------------------------------------------------------

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def user_pieces(self, text: str) -> list[int]:
        """A user turn's ids: its tokens, or, with a question encoder, a <|piece|> per encoder state."""
        if self.turn_reader is None:
            return self.encode(text)
        return [self.ids[PIECE]] * self.turn_reader.length(text)

    def render(self, messages: Sequence[dict], generation_prompt: bool = False) -> tuple[list[int], list[int]]:
        """A conversation -> (ids, labels): `<image>` first, then the turns; labels hold the
        assistant's tokens and their <|end|>, IGNORE elsewhere. `generation_prompt` ends it with
        <|assistant|> for the model to answer."""
        ids, labels = [self.ids[IMAGE]], [IGNORE]
        for k, message in enumerate(messages):
            role, content = message.get("role"), str(message.get("content", ""))
            if role == "user":
                turn = [self.ids[USER]] + self.user_pieces(content)
                ids, labels = ids + turn, labels + [IGNORE] * len(turn)
            elif role == "assistant":
                answer = self.encode(content) + [self.ids[END]]
                ids, labels = ids + [self.ids[ASSISTANT]] + answer, labels + [IGNORE] + answer
            else:
                raise ConversationError(f"message {k}: role must be 'user' or 'assistant', not {role!r}")
        if generation_prompt:
            ids, labels = ids + [self.ids[ASSISTANT]], labels + [IGNORE]
        return ids, labels

    def prompt(self, messages: Sequence[dict]) -> list[int]:
        """The prompt ids that generation continues (the `<image>` placeholder left out where the
        image prefix takes its place), after checking the conversation fits the context."""
        if not messages or messages[-1].get("role") != "user":
            raise ConversationError("the conversation must end with a user turn")
        if not str(messages[-1].get("content", "")).strip():
            raise ConversationError("the question is empty")
        ids = self.render(messages, generation_prompt=True)[0]
        ids = ids[1:] if self.prefix_length else ids  # a prefix takes the placeholder's place
        room = self.max_positions - self.prefix_length - len(ids)
        if room < 1:
            raise ConversationError(f"the conversation is too long: {len(ids)} tokens and "
                                    f"{self.prefix_length} image tokens leave no room in the model's "
                                    f"{self.max_positions} positions (start a new conversation)")
        return ids

    @staticmethod
    def user_turns(messages: Sequence[dict]) -> list[str]:
        """The conversation's user turns in order (what a question encoder reads)."""
        return [str(m.get("content", "")) for m in messages if m.get("role") == "user"]

    # -- generation -------------------------------------------------------------------------------

    def bind_prompts(self, images: torch.Tensor, prompts: list[list[int]], conversations: Sequence[Sequence[dict]]):
        """`bind`, plus the prompts' embeddings where a question encoder reads the user turns
        (left-padded as `generate` pads the prompts)."""
        if self.turn_reader is None:
            return self.bind(images)
        ids, _ = left_pad(prompts, self.ids[PAD], self.device)  # (B, T)
        return self.bind(images, self.embed(ids, [self.user_turns(c) for c in conversations]))

    def preprocess(self, images) -> torch.Tensor:
        """A uint8 tensor (B, 3, S, S) as it is, or PIL images resized and centre-cropped."""
        if isinstance(images, torch.Tensor):
            return images
        size = self.config.image.image_size
        return torch.from_numpy(np.stack([resize_and_crop(im, size) for im in images]))

    def generation_config(self, config: GenerationConfig | None, prompts: list[list[int]]) -> GenerationConfig:
        """`config` with <|end|> as a stop sequence and no more tokens than the context has room for."""
        config = config or GenerationConfig()
        room = self.max_positions - self.prefix_length - max(len(p) for p in prompts)
        return dataclasses.replace(config, pad_token_id=self.ids[PAD], max_new_tokens=min(config.max_new_tokens, room),
                                   stop_sequences=config.stop_sequences + ((self.ids[END],),))

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True).strip()

    @torch.no_grad()
    def reply(self, images, conversations: Sequence[Sequence[dict]], config: GenerationConfig | None = None,
              batch_size: int = 64) -> list[str]:
        """The assistant's next answer to each (image, conversation), decoded in batches."""
        if len(images) != len(conversations):
            raise ValueError(f"{len(images)} images for {len(conversations)} conversations")
        was_training, out = self.training, []
        self.eval()
        pixels, prompts = self.preprocess(images), [self.prompt(c) for c in conversations]
        for start in range(0, len(prompts), batch_size):
            batch = prompts[start:start + batch_size]
            lm = self.bind_prompts(pixels[start:start + batch_size], batch, conversations[start:start + batch_size])
            out += [self.decode(row) for row in generate(lm, batch, self.generation_config(config, batch)).tokens]
        self.train(was_training)
        return out

    def answer(self, images, questions: Sequence[str], config: GenerationConfig | None = None) -> list[str]:
        """One single-turn answer per (image, question), batched."""
        return self.reply(images, [[{"role": "user", "content": q}] for q in questions], config)

    def caption(self, images, config: GenerationConfig | None = None) -> list[str]:
        return self.answer(images, [CAPTION_PROMPT] * len(images), config) if len(images) else []

    def chat_stream(self, image: Image.Image, messages: Sequence[dict],
                    config: GenerationConfig | None = None) -> Iterator[str]:
        """The answer's text in pieces as they are decoded; the pieces concatenate to `chat`'s answer."""
        prompt = self.prompt(messages)
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                lm = self.bind_prompts(self.preprocess([image]), [prompt], [messages])
            tokens, sent = [], ""
            for step in stream(lm, [prompt], self.generation_config(config, [prompt])):
                tokens += step[0]
                text = self.decode(tokens)
                if text.endswith("\ufffd"):  # a byte-level tokenizer's half character: wait for the rest
                    continue
                if text.startswith(sent) and len(text) > len(sent):  # a piece is sent once it is final text
                    yield text[len(sent):]
                    sent = text
        finally:
            self.train(was_training)

    def chat(self, image: Image.Image, messages: Sequence[dict], config: GenerationConfig | None = None) -> str:
        """The assistant's answer to the conversation about `image` (greedy unless `config` says)."""
        return "".join(self.chat_stream(image, messages, config))


def _turn_reader(config: ChatConfig, lm_width: int) -> TurnReader | None:
    if config.question_encoder in (None, ""):
        return None
    if config.question_encoder != "minilm":
        raise ValueError(f"unknown question_encoder '{config.question_encoder}' (known: minilm)")
    return TurnReader(lm_width)


def chat_loss(outputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """Next-token cross-entropy on the assistant's tokens only."""
    return F.cross_entropy(outputs["logits"].flatten(0, 1).float(), outputs["targets"].flatten(), ignore_index=IGNORE)


def collate(model: ChatModel, conversations: Sequence[Sequence[dict]]) -> tuple[torch.Tensor, torch.Tensor, list]:
    """Rendered conversations right-padded into (B, L) ids and labels (cut at the context's room),
    and each one's user turns (what a question encoder reads): `model(images, *collate(...))`."""
    rendered = [model.render(c) for c in conversations]
    limit = model.max_positions - model.prefix_length + (1 if model.prefix_length else 0)
    length = min(max(len(ids) for ids, _ in rendered), limit)
    ids = torch.full((len(rendered), length), model.ids[PAD], dtype=torch.long)
    labels = torch.full((len(rendered), length), IGNORE, dtype=torch.long)
    for row, (row_ids, row_labels) in enumerate(rendered):
        n = min(len(row_ids), length)
        ids[row, :n], labels[row, :n] = torch.tensor(row_ids[:n]), torch.tensor(row_labels[:n])
    return ids, labels, [model.user_turns(c) for c in conversations]


# ----------------------------------------------------------------------------------------------
# Making, saving and loading


def create_chat_model(config: str | ChatConfig, texts: Sequence[str], **overrides) -> ChatModel:
    """A new chat model: with `language_model` (a local HF causal-LM directory) that LM and its
    tokenizer; otherwise an LM built at the config's size and a tokenizer trained on `texts`."""
    config = replace_fields(config if isinstance(config, ChatConfig) else get_chat_config(config), overrides)
    if config.language_model:
        lm, tok = load_user_language_model(config.language_model)
        tok = with_template_tokens(tok)
        lm.resize_token_embeddings(tok.get_vocab_size())
    else:
        tok = with_template_tokens(train_chat_tokenizer(texts, config.vocab_size))
        lm = build_language_model(config, tok)
    return ChatModel(config, tok, lm)


def save_chat_model(model: ChatModel, directory: str | Path, extra: dict | None = None) -> Path:
    """`config.json` (kind "chat", the LM's architecture) + `model.safetensors` + `tokenizer.json`,
    replacing their namesakes in `directory` together (other files there stay)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with atomic_path(directory, merge=True) as staging:
        staging.mkdir()
        save_model(model, str(staging / "model.safetensors"), metadata={"format": "polymodal-chat"})
        model.tokenizer.save(str(staging / "tokenizer.json"))
        write_json(staging / "config.json", {"kind": "chat", "chat": model.config.to_dict(),
                                             "language_model": json.loads(model.language_model.config.to_json_string()),
                                             **(extra or {})})
    return directory


def _read_meta(directory: Path) -> dict:
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: no such checkpoint directory")
    try:
        meta = json.loads((directory / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{directory}: not a chat checkpoint ({err.__class__.__name__} reading config.json)") \
            from None
    if meta.get("kind") != "chat" or "language_model" not in meta:
        raise CheckpointError(f"{directory}: not a chat checkpoint (config.json has no chat model)")
    if not (directory / "tokenizer.json").is_file():
        raise CheckpointError(f"{directory}: tokenizer.json is missing")
    return meta


def load_chat_model(directory: str | Path, device: str = "cpu") -> ChatModel:
    directory = Path(directory)
    meta = _read_meta(directory)
    config = ChatConfig.from_dict(meta["chat"])
    tok = HFTokenizer.from_file(str(directory / "tokenizer.json"))
    model = ChatModel(config, tok, language_model_from_dict(meta["language_model"]))
    try:
        load_model(model, str(directory / "model.safetensors"))
    except Exception as err:  # safetensors raises several types for a damaged or mismatched file
        raise CheckpointError(f"{directory / 'model.safetensors'}: unreadable weights "
                              f"({err.__class__.__name__})") from None
    return model.to(device).eval()
