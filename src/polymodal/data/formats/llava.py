"""LLaVA-style conversation JSON: a list of `{"id", "image", "conversations": [{"from": "human" |
"gpt", "value"}, ...]}` (LLaVA's instruction-tuning files; shapes_qa's `conversations.json`).

Each entry becomes a record with the image and `attributes["conversations"]` (the turns as given;
`<image>` stays in the first human turn, chat training strips it). An entry that is not an object,
has no image, or whose turns do not alternate human/gpt starting with human is skipped and named.
An optional `"split"` per entry is kept (default: the `split` argument).
"""

from __future__ import annotations

from pathlib import Path

from ..schema import DataError, Record, SkipLog
from .coco import read_json_file

ROLES = ("human", "gpt")
IMAGE_TOKEN = "<image>"


def looks_like_llava(path: Path) -> bool:
    """A JSON file whose top level is a list (COCO's is an object)."""
    with open(path, "rb") as f:
        return f.read(4096).lstrip()[:1] == b"["


def read_llava(path: Path, skips: SkipLog, split: str = "train") -> list[Record]:
    data = read_json_file(path)
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of LLaVA-style entries")
    records = []
    for n, entry in enumerate(data):
        where = f"{path}: entry {entry.get('id', n) if isinstance(entry, dict) else n}"
        problem = _entry_problem(entry)
        if problem:
            skips.skip(where, problem)
            continue
        records.append(Record(id=str(entry.get("id", n)), split=str(entry.get("split", split)), image=entry["image"],
                              attributes={"conversations": entry["conversations"]}))
    return records


def _entry_problem(entry) -> str | None:
    if not isinstance(entry, dict):
        return "not a JSON object"
    if not isinstance(entry.get("image"), str) or not entry["image"]:
        return "no 'image' path"
    turns = entry.get("conversations")
    if not isinstance(turns, list) or len(turns) < 2:
        return "'conversations' is not a list of at least one human and one gpt turn"
    for k, turn in enumerate(turns):
        if not isinstance(turn, dict) or turn.get("from") != ROLES[k % 2]:
            return f"turn {k} is not from '{ROLES[k % 2]}' (turns alternate human, gpt)"
        if not isinstance(turn.get("value"), str) or not turn["value"].strip():
            return f"turn {k} has no text"
    if len(turns) % 2:
        return "the last turn is a question without an answer"
    return None


def llava_to_messages(turns: list[dict]) -> list[dict]:
    """LLaVA turns -> chat messages (`{"role": "user" | "assistant", "content"}`), the `<image>`
    placeholder taken out of the text (the chat template puts the image first itself)."""
    return [{"role": "user" if t["from"] == "human" else "assistant",
             "content": t["value"].replace(IMAGE_TOKEN, "").strip()} for t in turns]
