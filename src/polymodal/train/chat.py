"""Training the chat model (`models.generative.chat`) in two stages, as LLaVA does.

Stage 1 (alignment) teaches the projector to put images where the language model reads them, on
captions rendered as "describe the image." -> caption. LLaVA freezes its pretrained LM here; the LM
built here is untrained, so it trains too (a user's own LM, `language_model`, stays frozen).
Stage 2 (instruction tuning) trains everything on the conversations: the records'
`attributes["conversations"]` (LLaVA turns: ShapesWorld's from `polymodal data questions`, a
user's LLaVA JSON) and their training-wording `attributes["questions"]` as single-turn talks
(Sort-of-CLEVR's questions, ShapesWorld's). The loss is on the assistant's tokens only.

Both stages run on the step loop the other trainers share (`engine.StepLoop`: AdamW, warm-up +
cosine on progress) and log to the same `MetricsLog`; the checkpoint is written at the end.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..data.formats import load_records
from ..data.formats.llava import llava_to_messages
from ..data.kinds import read_meta
from ..data.pairs import ImageTextPairs
from ..data.schema import DataError, Record
from ..models.generative.chat import (
    CAPTION_PROMPT,
    ChatModel,
    chat_loss,
    collate,
    create_chat_model,
    get_chat_config,
    save_chat_model,
)
from ..utils import pick_device, seed_everything
from .engine import StepLoop, TrainingProgress
from .metrics import MetricsLog
from .optim import build_optimizer, clip_and_step


@dataclass
class ChatTrainConfig:
    data: str
    out: str
    model: str = "shapes-chat-small"  # a preset name or a ChatConfig JSON file
    language_model: str | None = None  # a local Hugging Face causal-LM directory to use as the LM
    question_encoder: str | None = None  # "minilm": the model's user turns read by the bundled MiniLM
    stage1_steps: int = 1000  # captions (skipped where the data has none): grounds the image tokens
    stage2_steps: int = 2000  # conversations
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup: float = 0.05
    grad_clip: float = 1.0
    seed: int = 0
    device: str = "auto"
    progress: bool = True


def record_conversations(record: Record) -> list[list[dict]]:
    """The chat messages a record trains on: its conversation and its training-wording questions."""
    talks = []
    if record.attributes.get("conversations"):
        talks.append(llava_to_messages(record.attributes["conversations"]))
    for q in record.attributes.get("questions") or []:
        if q.get("wording", "train") == "train" and str(q.get("text", "")).strip():
            talks.append([{"role": "user", "content": q["text"]}, {"role": "assistant", "content": str(q["answer"])}])
    return talks


def caption_conversations(record: Record, has_captions: bool) -> list[list[dict]]:
    """Stage 1's talks: the record's captions, or, where its text is not captions, the scene
    description its dataset gives (Sort-of-CLEVR's `attributes.description`), if any."""
    captions = record.text if has_captions else [record.attributes.get("description")]
    return [[{"role": "user", "content": CAPTION_PROMPT}, {"role": "assistant", "content": c}]
            for c in captions if c]


class ChatExamples:
    """(image index, conversation) pairs over one set of decoded images, shuffled per epoch."""

    def __init__(self, images: torch.Tensor, items: list[tuple[int, list[dict]]]):
        self.images, self.items = images, items  # (N, 3, S, S) uint8

    def __len__(self) -> int:
        return len(self.items)

    def batches(self, model: ChatModel, batch_size: int, seed: int, epoch: int) -> Iterator[tuple]:
        order = list(range(len(self.items)))
        random.Random(f"chat/{seed}/{epoch}").shuffle(order)
        for start in range(0, len(order) - len(order) % batch_size, batch_size):
            window = [self.items[i] for i in order[start:start + batch_size]]
            yield self.images[[i for i, _ in window]], *collate(model, [talk for _, talk in window])


def load_examples(cfg: ChatTrainConfig, image_size: int) -> tuple[ChatExamples, ChatExamples, list[str]]:
    """Stage 1 and stage 2 examples from the train split, and every text (for the tokenizer)."""
    data = load_records(cfg.data)
    train_set = data.split("train")
    if not train_set.records:
        raise DataError(f"{cfg.data}: no 'train' split to train the chat model on")
    pairs = ImageTextPairs(train_set, image_size, progress=cfg.progress, need_text=False)
    # Sort-of-CLEVR keeps its questions in `text`: they are not captions
    has_captions = read_meta(data.root).get("name") != "sort-of-clevr"
    captions = [(i, t) for i, r in enumerate(pairs.records) for t in caption_conversations(r, has_captions)]
    talks = [(i, t) for i, r in enumerate(pairs.records) for t in record_conversations(r)]
    if not talks:
        raise DataError(f"{cfg.data}: no conversations or questions to train on (run `polymodal data questions`)")
    texts = [m["content"] for _, t in captions + talks for m in t]
    return ChatExamples(pairs.images, captions), ChatExamples(pairs.images, talks), texts


def _trainable(model: ChatModel, stage: int, user_lm: bool) -> None:
    """Stage 1 with a user's pretrained LM: that LM frozen (LLaVA); otherwise everything trains."""
    for p in model.parameters():
        p.requires_grad_(True)
    if stage == 1 and user_lm:
        for p in model.language_model.parameters():
            p.requires_grad_(False)


def _train_step(model: ChatModel, optimizer, grad_clip: float, device: str):
    def step(batch) -> dict[str, float]:
        images, ids, labels, turns = batch
        loss = chat_loss(model(images.to(device), ids.to(device), labels.to(device), turns))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        clip_and_step(model, optimizer, grad_clip)
        return {"loss": loss.item()}

    return step


def run_stage(model: ChatModel, examples: ChatExamples, stage: int, steps: int, time_budget: float | None,
              cfg: ChatTrainConfig, log: MetricsLog, first_step: int, device: str) -> dict | None:
    """One training stage on its own optimizer and schedule; None where it has nothing to do."""
    if steps <= 0 or len(examples) < cfg.batch_size:
        return None
    _trainable(model, stage, cfg.language_model is not None)
    optimizer = build_optimizer(model, cfg.lr, cfg.weight_decay)
    progress = TrainingProgress(steps, time_budget)
    last: dict[str, float] = {}

    def after_step(losses: dict[str, float]) -> str:
        last.update(losses)
        if progress.step % 20 == 0 or progress.done:
            log.log(first_step + progress.step, {f"stage{stage}/loss": losses["loss"],
                                                 "train/lr": optimizer.param_groups[0]["lr"]})
        return f"stage {stage} loss {losses['loss']:.3f}"

    loop = StepLoop(model, optimizer, progress, cfg.lr, cfg.warmup, show=cfg.progress)
    loop.run(lambda epoch: examples.batches(model, cfg.batch_size, cfg.seed, epoch),
             _train_step(model, optimizer, cfg.grad_clip, device), after_step)
    _trainable(model, 2, False)
    return {"steps": progress.step, "seconds": round(progress.elapsed, 1), "loss": last.get("loss"),
            "examples": len(examples)}


def train_chat(cfg: ChatTrainConfig, stage1_time: float | None = None, stage2_time: float | None = None) -> dict:
    """Train a new chat model on the train split of `cfg.data` (stage 1 on captions, stage 2 on
    conversations; `stageN_time`: a time budget in seconds) and save it to `cfg.out`."""
    seed_everything(cfg.seed)
    image_size = get_chat_config(cfg.model).image.image_size
    captions, talks, texts = load_examples(cfg, image_size)
    overrides = {k: v for k, v in (("language_model", cfg.language_model),
                                   ("question_encoder", cfg.question_encoder)) if v}
    model = create_chat_model(cfg.model, texts, **overrides)
    device = pick_device(cfg.device)
    model.to(device)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    log = MetricsLog(out, enabled=True, resume=False)
    stage1 = run_stage(model, captions, 1, cfg.stage1_steps, stage1_time, cfg, log, 0, device)
    stage2 = run_stage(model, talks, 2, cfg.stage2_steps, stage2_time, cfg, log, (stage1 or {}).get("steps", 0), device)
    log.close()
    if stage2 is None:
        raise DataError(f"{cfg.data}: {len(talks)} conversations are fewer than one batch of {cfg.batch_size}")
    result = {"stage1": stage1, "stage2": stage2, "images": len(talks.images)}
    training = {k: v for k, v in asdict(cfg).items() if k != "progress"}
    save_chat_model(model.cpu(), out, extra={"training": training, **result})
    return result
