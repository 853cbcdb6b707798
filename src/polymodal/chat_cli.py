"""`polymodal chat IMAGE --model M` (an interactive session, or `--ask` once), `polymodal chat-train`,
`polymodal chat-eval` and `polymodal data questions`. Libraries (torch above all) are imported
when a command runs, so `polymodal --help` stays fast. Bad input (no image, an unreadable image, an
empty question, a conversation longer than the model's context) is one line and a non-zero exit."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console

from .errors import ConversationError, DataError

console = Console()
errors = Console(stderr=True)
HELP_LINE = "ask about the image; an empty line or Ctrl-D ends, /reset starts a new conversation"


def _load_chat(model: str):
    from .backends import load_model

    loaded = load_model(model)
    if not hasattr(loaded, "chat_stream"):
        raise DataError(f"{model}: not a chat model (it has no chat)")
    return loaded


def _answer(chat_model, image, messages: list[dict], config) -> str:
    """Stream the answer to the terminal as it is decoded; return its text."""
    pieces = []
    for piece in chat_model.chat_stream(image, messages, config):
        pieces.append(piece)
        console.print(piece, end="", highlight=False, markup=False, soft_wrap=True)
    console.print()
    return "".join(pieces)


def _session(chat_model, image, config) -> None:
    messages: list[dict] = []
    console.print(f"[dim]{HELP_LINE}[/]")
    while True:
        try:
            line = input("you> ").strip()
        except EOFError:
            break
        if not line:
            break
        if line == "/reset":
            messages = []
            console.print("[dim]new conversation[/]")
            continue
        try:
            reply = _answer(chat_model, image, messages + [{"role": "user", "content": line}], config)
        except ConversationError as err:
            errors.print(f"[bold red]error:[/] {err} (type /reset)", highlight=False)
            continue
        messages += [{"role": "user", "content": line}, {"role": "assistant", "content": reply}]


def chat_cmd(
    image: Path = typer.Argument(..., help="The image to talk about."),
    model: str = typer.Option(..., help="A chat checkpoint directory (polymodal chat-train)."),
    ask: str | None = typer.Option(None, help="Answer this one question and exit."),
    max_new_tokens: int = typer.Option(48, min=1),
    temperature: float = typer.Option(0.0, min=0.0, help="0: greedy; above 0: sampling."),
    top_p: float | None = typer.Option(None, help="With --temperature: nucleus sampling."),
    seed: int | None = typer.Option(None),
):
    """Chat about IMAGE with a chat model: an interactive session keeping the conversation, or --ask once."""
    from .modalities.image_files import load_image
    from .models.generative import GenerationConfig

    if ask is not None and not ask.strip():
        raise DataError("the question is empty (--ask)")
    picture = load_image(image)  # a missing or unreadable file: one clear error
    chat_model = _load_chat(model)
    config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=temperature > 0,
                              temperature=temperature or 1.0, top_p=top_p, seed=seed)
    if ask is not None:
        _answer(chat_model, picture, [{"role": "user", "content": ask}], config)
    else:
        _session(chat_model, picture, config)


def chat_train_cmd(
    data: Path = typer.Argument(..., help="Dataset with conversations/questions (polymodal data questions), "
                                "Sort-of-CLEVR, or a LLaVA-style conversations JSON."),
    out: Path = typer.Option(..., help="Directory for the checkpoint."),
    model: str = typer.Option("shapes-chat-small", help="Preset (shapes-chat-small: cross-attention to the "
                              "image; shapes-chat-minilm: the same, questions read by the bundled MiniLM; "
                              "shapes-chat-prefix: LLaVA's prefix; shapes-chat-tiny) or a JSON config file."),
    language_model: Path | None = typer.Option(None, help="A local Hugging Face causal-LM directory to use as "
                                               "the language model (with its tokenizer.json)."),
    question_encoder: str | None = typer.Option(None, help="'minilm': read the user's turns with the bundled "
                                                "MiniLM (frozen), so that unseen wordings keep their meaning."),
    stage1_steps: int = typer.Option(1000, min=0, help="Stage 1 (captions) steps; 0 skips it."),
    stage2_steps: int = typer.Option(2000, min=1, help="Stage 2 (conversations) steps."),
    stage1_time: str | None = typer.Option(None, help="Stage 1 time budget (e.g. 5m): ends at steps or time."),
    stage2_time: str | None = typer.Option(None, help="Stage 2 time budget (e.g. 25m)."),
    batch_size: int = typer.Option(64, min=1),
    lr: float = typer.Option(2e-3),
    seed: int = typer.Option(0),
    device: str = typer.Option("auto", help="auto, cpu, cuda ..."),
):
    """Train a LLaVA-style chat model in two stages: captions, then conversations."""
    from .cli_options import parse_duration
    from .train.chat import ChatTrainConfig, train_chat

    cfg = ChatTrainConfig(data=str(data), out=str(out), model=model,
                          language_model=str(language_model) if language_model else None,
                          question_encoder=question_encoder,
                          stage1_steps=stage1_steps, stage2_steps=stage2_steps, batch_size=batch_size, lr=lr,
                          seed=seed, device=device)
    result = train_chat(cfg, parse_duration(stage1_time) if stage1_time else None,
                        parse_duration(stage2_time) if stage2_time else None)
    console.print_json(json.dumps(result))
    console.print(f"saved the chat model to {out}")


def chat_eval_cmd(
    data: Path = typer.Argument(..., help="Dataset with questions/conversations in its evaluation splits."),
    model: str = typer.Option(..., help="A chat checkpoint directory."),
    split: list[str] | None = typer.Option(None, help="Splits to score (default: test, test_unseen)."),
    limit: int | None = typer.Option(None, min=1, help="At most this many images per split."),
    json_out: Path | None = typer.Option(None, "--json", help="Write every figure to this JSON file."),
):
    """Exact-match answer accuracy per question family, wording, follow-up turn and split."""
    from .data import load_records
    from .evaluate.chat import EVAL_SPLITS, evaluate_chat
    from .utils import write_json

    result = evaluate_chat(_load_chat(model), load_records(data), split or EVAL_SPLITS, limit)
    if not result["splits"]:
        raise DataError(f"{data}: no questions or conversations in the splits {', '.join(split or EVAL_SPLITS)}")
    console.print_json(json.dumps(result["summary"]))
    if json_out:
        write_json(json_out, result)
        console.print(f"wrote {json_out}")


def data_questions(
    dataset: Path = typer.Argument(..., help="A ShapesWorld dataset (polymodal data shapes)."),
    out: Path | None = typer.Option(None, help="Where to write (default: rewrite DATASET in place)."),
    seed: int = typer.Option(0),
    per_family: int = typer.Option(1, min=1, help="Questions per family and wording per image."),
    turns: int = typer.Option(3, min=1, help="Turns per conversation."),
):
    """Add questions and multi-turn conversations with known answers to a ShapesWorld dataset."""
    from .data.schema import SkipLog
    from .data.synthetic.shapes_qa import write_qa_dataset

    skips = SkipLog()
    n = write_qa_dataset(dataset, out, seed=seed, per_family=per_family, turns=turns, skips=skips)
    console.print(f"wrote {n} records with questions and conversations to {out or dataset}")
    if len(skips):
        console.print(skips.summary())
