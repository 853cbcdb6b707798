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
    if data.get("images") and isinstance(data["images"][0], dict) and "sentences" in data["images"][0]:
        return _karpathy(data, skips)
    raise DataError(f"{path}: neither COCO captions ('images' + 'annotations') nor a Karpathy split file")


def _load_json(path: Path) -> dict:
    data = read_json_file(path)
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise DataError(f"{path}: expected a JSON object with an 'images' list")
    return data


def read_json_file(path: Path):
    """A JSON file's content; a missing, unreadable or invalid file is one DataError naming it."""
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: not valid JSON ({err.msg}, line {err.lineno})") from None
    except UnicodeDecodeError:
        raise DataError(f"{path}: not valid JSON (not UTF-8 text)") from None
    except OSError as err:
        raise DataError(f"{path}: cannot be read ({err.strerror or err.__class__.__name__})") from None
    return data


def _coco_captions(data: dict, skips: SkipLog, split: str) -> list[Record]:
    captions: dict[int, list[str]] = defaultdict(list)
    for n, ann in enumerate(data["annotations"] if isinstance(data["annotations"], list) else []):
        if not isinstance(ann, dict) or "image_id" not in ann or not isinstance(ann.get("caption", ""), str):
            skips.skip(f"annotation {n}", "missing 'image_id', or a caption that is not a string")
            continue
        captions[ann["image_id"]].append(ann.get("caption", ""))
    records = []
    for n, img in enumerate(data["images"]):
        if not isinstance(img, dict) or "id" not in img or not isinstance(img.get("file_name"), str):
            skips.skip(f"image entry {img.get('id', n) if isinstance(img, dict) else n}", "missing 'id' or 'file_name'")
            continue
        records.append(Record(id=str(img["id"]), split=split, image=img["file_name"], text=captions.get(img["id"], [])))
    return records


def _karpathy(data: dict, skips: SkipLog) -> list[Record]:
    records = []
    for n, img in enumerate(data["images"]):
        if not isinstance(img, dict) or not isinstance(img.get("filename"), str):
            skips.skip(f"image entry {img.get('imgid', n) if isinstance(img, dict) else n}", "missing 'filename'")
            continue
        rel = str(Path(str(img.get("filepath", ""))) / img["filename"])
        split = KARPATHY_SPLITS.get(img.get("split", "train"), img.get("split", "train"))
        text = [str(s.get("raw", "")) if isinstance(s, dict) else str(s) for s in img.get("sentences", [])]
        rec_id = str(img.get("cocoid", img.get("imgid", img["filename"])))
        records.append(Record(id=rec_id, split=split, image=rel, text=text))
    return records
