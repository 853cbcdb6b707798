"""Pretrained Hugging Face vision-language models behind polymodal's generative interface.

Families, by `model_type` in config.json:
    blip                  BLIP captioning (BlipForConditionalGeneration): `caption`
    llava                 LLaVA (LlavaForConditionalGeneration): `chat`, `chat_stream`, `caption`
    idefics3, smolvlm     Idefics3 / SmolVLM (SmolVLM v1 checkpoints are idefics3): as llava

Each loads with `AutoModelForImageTextToText` and `AutoProcessor`, so the checkpoint's own image
processor, tokenizer and chat template build the inputs, and decoding is transformers' own
`generate` (greedy output is the library's, token for token). polymodal's `GenerationConfig` maps
onto `generate`'s arguments; stop sequences of token ids come from it, stop strings from `stop=`.
A chat model captions by answering `CAPTION_PROMPT`.

Sources: `hf:<repo id>` (the local cache; the hub only when it can be reached) or a directory as
`save_pretrained` writes it (model and processor). transformers is imported inside the functions
that need it: it is an optional extra and slow to import.
"""

from __future__ import annotations

import abc
import contextlib
import json
import queue
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from PIL import Image
from torch import nn

from ..errors import CheckpointError, ConversationError
from ..models.generative.decoding import Generation, GenerationConfig, stop_length
from .hub import cache_only_when_offline

VLM_FAMILIES = {"blip": "captioner", "llava": "chat", "idefics3": "chat", "smolvlm": "chat"}
CAPTION_PROMPT = "Describe this image in one sentence."


def vlm_family(source: str | Path) -> str | None:
    """"captioner" or "chat" when `source` (a directory or a repo id) is a supported VLM, else None."""
    return VLM_FAMILIES.get(read_config(str(source)).get("model_type"))


def is_hf_vlm(source: str | Path) -> bool:
    return vlm_family(source) is not None


def read_config(source: str) -> dict:
    """config.json of a directory, or of a repo id from the cache (or the hub when reachable)."""
    file: str | Path | None = Path(source) / "config.json"
    if not Path(source).is_dir():
        from transformers.utils import cached_file

        with cache_only_when_offline():
            try:
                file = cached_file(source, "config.json", _raise_exceptions_for_missing_entries=False)
            except (OSError, ValueError):  # not cached / not a valid repo id: the caller's loader says why
                return {}
    try:
        config = json.loads(Path(file).read_text())
    except (OSError, ValueError, TypeError):
        return {}
    return config if isinstance(config, dict) else {}


def load_hf_vlm(source: str, device: str = "cpu", model_id: str | None = None) -> HFCaptioner | HFChatModel:
    """`source`: a repo id (cache, or the hub when reachable) or a local model directory."""
    from transformers import AutoModelForImageTextToText, AutoProcessor
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # one bar per weight file is noise for a CLI
    local = Path(source).is_dir()
    # float32 on the CPU (float16 products are unusable there); on a GPU the checkpoint's own dtype
    dtype = torch.float32 if torch.device(device).type == "cpu" else "auto"
    with cache_only_when_offline() as online:
        try:
            processor = AutoProcessor.from_pretrained(source)
            model = AutoModelForImageTextToText.from_pretrained(source, dtype=dtype)
        except (OSError, ValueError) as err:
            raise load_error(source, local, online, err) from None
        except ImportError as err:  # a processor's own dependency (SmolVLM's needs num2words)
            raise CheckpointError(f"{source}: {_first_line(err)}") from None
    family = VLM_FAMILIES.get(model.config.model_type)
    if family is None:
        raise CheckpointError(f"{source}: model_type '{model.config.model_type}' is not a supported "
                              f"vision-language model ({', '.join(VLM_FAMILIES)})")
    if family == "chat" and not getattr(processor, "chat_template", None):
        raise CheckpointError(f"{source}: the processor has no chat template (chat_template.jinja), "
                              "so a conversation cannot be turned into a prompt")
    name = model_id or (f"hf:{Path(source).resolve()}" if local else f"hf:{source}")
    cls = HFChatModel if family == "chat" else HFCaptioner
    return cls(model.eval(), processor, name).to(device)


def load_error(source: str, local: bool, online: bool, err: Exception) -> CheckpointError:
    if local:
        return CheckpointError(f"{source}: not a complete Hugging Face model directory ({_first_line(err)})")
    where = "not in the Hugging Face cache" + ("" if online else " and the hub cannot be reached (offline)")
    return CheckpointError(f"hf:{source}: {where}; download it where there is a network "
                           f"(`hf download {source} --local-dir DIR`) and pass DIR, or point HF_HOME "
                           f"at a cache that holds it")


def _first_line(err: Exception) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else err.__class__.__name__


class HFVisionLanguageModel(nn.Module, abc.ABC):
    """What both kinds share: `generate_tokens` (transformers' generate under polymodal's
    GenerationConfig) and decoding the new tokens to text. Abstract: each family (`HFCaptioner`,
    `HFChatModel`) says how to ask for a caption."""

    def __init__(self, model, processor, model_id: str):
        super().__init__()
        self.model = model
        self.processor = processor
        self.model_id = model_id
        self.max_positions = model.config.get_text_config().max_position_embeddings

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def eos_ids(self) -> set[int]:
        """The tokens that end an answer (removed from it)."""
        eos = self.model.generation_config.eos_token_id
        return set(eos if isinstance(eos, list) else [] if eos is None else [eos])

    def prompt_length(self, inputs) -> int:
        """Where the new tokens start in generate's output rows."""
        return inputs["input_ids"].shape[1]

    def generate_tokens(self, inputs, config: GenerationConfig | None = None, stop: Sequence[str] = (),
                        **extra) -> Generation:
        """The new tokens of each row of `inputs` (the processor's output), cut where an end token or
        stop sequence ends the row (the stop removed); `extra` goes to generate (a streamer)."""
        config = config or GenerationConfig()
        inputs = inputs.to(self.device)
        if self.model.dtype != torch.float32:
            inputs = inputs.to(self.model.dtype)  # pixel values only: BatchFeature casts floating tensors
        start = self.prompt_length(inputs)
        kwargs = generate_kwargs(config, self.max_positions - start, self.processor.tokenizer, stop)
        extra_criteria = extra.pop("stopping_criteria", [])
        criteria = [StopSequences(config.stop_sequences, start)] if config.stop_sequences else []
        with _seeded(config.seed, self.device):
            out = self.model.generate(**inputs, **kwargs, stopping_criteria=criteria + extra_criteria, **extra)
        rows = [cut_answer(row, self.eos_ids, config.stop_sequences) for row in out[:, start:].tolist()]
        return Generation([tokens for tokens, _ in rows], [reason for _, reason in rows])

    def decode(self, tokens: Sequence[int], stop: Sequence[str] = ()) -> str:
        """The answer's text, up to the first stop string."""
        text = self.processor.decode(list(tokens), skip_special_tokens=True)
        return cut_at_stop_string(text, stop)[0].strip()

    @abc.abstractmethod
    def caption_inputs(self, images: list[Image.Image]):
        """The processor's inputs that ask for a caption of each image (BLIP: the images alone;
        chat models: a fixed prompt in their chat template)."""

    def caption(self, images, config: GenerationConfig | None = None, stop: Sequence[str] = (),
                batch_size: int = 16) -> list[str]:
        """One caption per image (PIL images or a uint8 (B, 3, S, S) tensor), `batch_size` at a time."""
        pictures = as_pil_images(images)
        out = []
        for begin in range(0, len(pictures), batch_size):
            inputs = self.caption_inputs(pictures[begin:begin + batch_size])
            out += [self.decode(row, stop) for row in self.generate_tokens(inputs, config, stop).tokens]
        return out


class HFCaptioner(HFVisionLanguageModel):
    """BLIP: its text decoder continues a start token it puts in front of the image's caption."""

    @property
    def eos_ids(self) -> set[int]:
        return {self.model.config.text_config.sep_token_id}  # BLIP's generate ends captions at [SEP]

    def prompt_length(self, inputs) -> int:
        return 1  # generate's rows are the start token and the caption

    def caption_inputs(self, images: list[Image.Image]):
        return self.processor(images=images, return_tensors="pt")


class HFChatModel(HFVisionLanguageModel):
    """LLaVA, Idefics3, SmolVLM: the conversation through the processor's chat template, the image
    in the first user turn."""

    def __init__(self, model, processor, model_id: str):
        super().__init__(model, processor, model_id)
        self.processor.tokenizer.padding_side = "left"  # a batch's prompts end in the same column

    def chat_inputs(self, images: list[Image.Image], conversations: Sequence[Sequence[dict]]):
        prompts = [self.processor.apply_chat_template(hf_conversation(m), add_generation_prompt=True)
                   for m in conversations]
        inputs = self.processor(images=[[im] for im in images], text=prompts, padding=True, return_tensors="pt")
        length = inputs["input_ids"].shape[1]
        if length >= self.max_positions:
            raise ConversationError(f"the conversation is too long: {length} tokens (with the image's) fill "
                                    f"the model's {self.max_positions} positions (start a new conversation)")
        return inputs

    def caption_inputs(self, images: list[Image.Image]):
        return self.chat_inputs(images, [[{"role": "user", "content": CAPTION_PROMPT}]] * len(images))

    def chat(self, image: Image.Image, messages: Sequence[dict], config: GenerationConfig | None = None,
             stop: Sequence[str] = ()) -> str:
        """The assistant's answer to the conversation about `image` (greedy unless `config` says)."""
        inputs = self.chat_inputs(as_pil_images([image]), [messages])
        return self.decode(self.generate_tokens(inputs, config, stop).tokens[0], stop)

    def chat_stream(self, image: Image.Image, messages: Sequence[dict], config: GenerationConfig | None = None,
                    stop: Sequence[str] = ()) -> Iterator[str]:
        """The answer's text in pieces as generate produces it; the pieces concatenate to `chat`'s
        answer. generate runs in a thread once iteration starts; closing the iterator stops it."""
        config = config or GenerationConfig()
        if config.num_beams > 1:
            raise ValueError("beam search cannot stream: its best answer is known only at the end")
        inputs = self.chat_inputs(as_pil_images([image]), [messages])  # a bad conversation raises here
        return self._stream(inputs, config, stop)

    def _stream(self, inputs, config: GenerationConfig, stop: Sequence[str]) -> Iterator[str]:
        tokens = TokenQueue()
        worker = threading.Thread(target=self._generate_into, args=(inputs, config, stop, tokens), daemon=True)
        worker.start()
        try:
            sent = ""
            for so_far in tokens:
                text = self._settled_text(so_far, config, stop)
                if text.startswith(sent) and len(text) > len(sent):  # a piece is sent once it is final text
                    yield text[len(sent):]
                    sent = text
            final = self.decode(cut_answer(tokens.tokens, self.eos_ids, config.stop_sequences)[0], stop)
            if len(final) > len(sent):
                yield final[len(sent):]
        finally:
            tokens.cancelled.set()
            worker.join()

    def _generate_into(self, inputs, config: GenerationConfig, stop: Sequence[str], tokens: TokenQueue) -> None:
        try:
            self.generate_tokens(inputs, config, stop, streamer=tokens, stopping_criteria=[tokens.stop_when_cancelled])
        except BaseException as err:  # handed to the reading thread, which raises it
            tokens.fail(err)

    def _settled_text(self, tokens: list[int], config: GenerationConfig, stop: Sequence[str]) -> str:
        """The text of `tokens` that no later token can change: without a tail that could begin a
        stop sequence or stop string, trailing whitespace, or an unfinished UTF-8 character."""
        answer, reason = cut_answer(tokens, self.eos_ids, config.stop_sequences)
        if reason == "length":
            answer = answer[: len(answer) - stop_prefix_length(answer, config.stop_sequences)]
        text = self.processor.decode(answer, skip_special_tokens=True)
        text, stopped = cut_at_stop_string(text, stop)
        if not stopped:
            text = text[: len(text) - stop_prefix_length(text, stop)]
        return text.rstrip().rstrip("\ufffd").strip()


class TokenQueue:
    """A transformers streamer whose tokens are read by iterating in another thread: each item is
    the answer's tokens so far. Its `stop_when_cancelled` criterion ends generate early."""

    _END = object()

    def __init__(self):
        self.items: queue.Queue = queue.Queue()
        self.tokens: list[int] = []
        self.cancelled = threading.Event()
        self.prompt_seen = False
        self.error: BaseException | None = None

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:  # generate first pushes the prompt
            self.prompt_seen = True
            return
        self.items.put(value.reshape(-1).tolist())

    def end(self) -> None:
        self.items.put(self._END)

    def fail(self, err: BaseException) -> None:
        self.error = err
        self.items.put(self._END)

    def stop_when_cancelled(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        return torch.full((input_ids.shape[0],), self.cancelled.is_set(), dtype=torch.bool, device=input_ids.device)

    def __iter__(self) -> Iterator[list[int]]:
        while (item := self.items.get()) is not self._END:
            self.tokens += item
            yield list(self.tokens)
        if self.error is not None:
            raise self.error


class StopSequences:
    """A generate stopping criterion: a row is done once its new tokens end with a stop sequence."""

    def __init__(self, stop_sequences: Sequence[Sequence[int]], prompt_length: int):
        self.stop_sequences = stop_sequences
        self.prompt_length = prompt_length

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        rows = input_ids[:, self.prompt_length:].tolist()
        done = [stop_length(row, self.stop_sequences) > 0 for row in rows]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


def generate_kwargs(config: GenerationConfig, room: int, tokenizer, stop: Sequence[str] = ()) -> dict:
    """polymodal's GenerationConfig as transformers generate arguments (the stop sequences of ids
    are a stopping criterion, added by the caller). `room`: positions left after the prompt."""
    if room < 1:
        raise ConversationError("the prompt fills the model's positions: no room for an answer")
    kwargs = {"max_new_tokens": min(config.max_new_tokens, room), "do_sample": config.do_sample,
              "num_beams": config.num_beams, "use_cache": config.use_cache}
    if config.num_beams > 1:
        kwargs["length_penalty"] = config.length_penalty
    if config.do_sample:  # 0 and 1.0 switch top-k / top-p off (generate's own defaults would apply)
        kwargs.update(temperature=config.temperature, top_k=config.top_k or 0, top_p=config.top_p or 1.0)
    if stop:
        kwargs.update(stop_strings=list(stop), tokenizer=tokenizer)
    return kwargs


def cut_answer(row: list[int], eos_ids: set[int], stop_sequences) -> tuple[list[int], str]:
    """A row of new tokens up to its first end token or stop sequence (removed): (tokens, "stop"),
    or the whole row and "length". What follows is generate's padding of a finished row."""
    for end, token in enumerate(row, start=1):
        if token in eos_ids:
            return row[: end - 1], "stop"
        matched = stop_length(row[:end], stop_sequences)
        if matched:
            return row[: end - matched], "stop"
    return row, "length"


def stop_prefix_length(seq: Sequence, stops: Sequence[Sequence]) -> int:
    """The longest tail of `seq` (ids or text) that is the start of a stop sequence (0: none)."""
    longest = 0
    for stop in stops:
        for k in range(min(len(stop) - 1, len(seq)), longest, -1):
            if tuple(seq[-k:]) == tuple(stop[:k]):
                longest = k
                break
    return longest


def cut_at_stop_string(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """`text` up to the first stop string in it, and whether there was one."""
    found = [i for i in (text.find(s) for s in stop) if i >= 0]
    return (text[: min(found)], True) if found else (text, False)


def hf_conversation(messages: Sequence[dict]) -> list[dict]:
    """polymodal messages ({"role", "content": str}) in the structured form chat templates take,
    the image placeholder leading the first user turn."""
    if not messages or not isinstance(messages[-1], dict) or messages[-1].get("role") != "user":
        raise ConversationError("the conversation must end with a user turn")
    out = []
    for i, message in enumerate(messages):
        role, content = message.get("role"), message.get("content")
        if role not in ("user", "assistant") or not isinstance(content, str):
            raise ConversationError(f"message {i}: needs role 'user' or 'assistant' and text content")
        parts = [{"type": "text", "text": content}]
        out.append({"role": role, "content": ([{"type": "image"}] if not out and role == "user" else []) + parts})
    if not messages[-1]["content"].strip():
        raise ConversationError("the question is empty")
    if out[0]["role"] != "user":
        raise ConversationError("the conversation must start with a user turn (it carries the image)")
    return out


def as_pil_images(images) -> list[Image.Image]:
    """PIL images as they are (RGB), or a uint8 (B, 3, S, S) tensor as PIL images."""
    if isinstance(images, torch.Tensor):
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f"images: expected a uint8 (B, 3, S, S) tensor, got {images.dtype} {tuple(images.shape)}")
        return [Image.fromarray(im.permute(1, 2, 0).cpu().numpy()) for im in images]
    return [im.convert("RGB") for im in images]


@contextlib.contextmanager
def _seeded(seed: int | None, device: torch.device):
    """Sampling from `seed` without moving the caller's global random state."""
    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        yield
