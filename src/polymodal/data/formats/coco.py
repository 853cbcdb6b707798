"""COCO captions JSON (`images` + `annotations`) and the Karpathy split file (`images` with
`sentences`, `split`, `filepath`, `filename`)."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from ..schema import DataError, Record, SkipLog

# Karpathy's split file marks part of val as "restval": it is used for training.
KARPATHY_SPLITS = {"restval": "train"}


def read_coco(path: Path, skips: SkipLog, split: str = "train") -> list[Record]:
    data = _load_json(path)
    if "annotations" in data:
        return _coco_captions(data, skips, split)
    if data.get("images") and "sentences" in data["images"][0]:
        return _karpathy(data, skips)
    raise DataError(f"{path}: neither COCO captions ('images' + 'annotations') nor a Karpathy split file")


def _load_json(path: Path) -> dict:
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: not valid JSON ({err.msg}, line {err.lineno})") from None
    if not isinstance(data, dict) or "images" not in data:
        raise DataError(f"{path}: expected a JSON object with an 'images' list")
    return data


def _coco_captions(data: dict, skips: SkipLog, split: str) -> list[Record]:
    captions: dict[int, list[str]] = defaultdict(list)
    for ann in data["annotations"]:
        captions[ann["image_id"]].append(ann.get("caption", ""))
    records = []
    for img in data["images"]:
        if "file_name" not in img or "id" not in img:
            skips.skip(f"image entry {img.get('id', '?')}", "missing 'id' or 'file_name'")
            continue
        records.append(Record(id=str(img["id"]), split=split, image=img["file_name"], text=captions.get(img["id"], [])))
    return records


def _karpathy(data: dict, skips: SkipLog) -> list[Record]:
    records = []
    for img in data["images"]:
        if "filename" not in img:
            skips.skip(f"image entry {img.get('imgid', '?')}", "missing 'filename'")
            continue
        rel = str(Path(img.get("filepath", "")) / img["filename"])
        split = KARPATHY_SPLITS.get(img.get("split", "train"), img.get("split", "train"))
        text = [s["raw"] if isinstance(s, dict) else str(s) for s in img.get("sentences", [])]
        rec_id = str(img.get("cocoid", img.get("imgid", img["filename"])))
        records.append(Record(id=rec_id, split=split, image=rel, text=text))
    return records
