"""Convert the pickle of the widely used public Sort-of-CLEVR generator (the relational-networks
re-implementation's `sort_of_clevr_generator.py`) into a polymodal VQA dataset laid out as
polymodal's own generator lays it out, so `polymodal lab vqa --data OUT` trains on it.

The pickle holds `(train, test)`, each a list of one tuple per image:
`(img, ternary, binary, non_relational)`, or `(img, binary, non_relational)` in the versions
before ternary questions, where
- img: (75, 75, 3) BGR (drawn with OpenCV), float64 in [0, 1] (the generator divides by 255),
  or uint8;
- each family: `(questions, answers)`; a question is 18 numbers (11 before ternary questions; the
  layouts of `sort_of_clevr.encode`), an answer an index into
  [yes, no, rectangle, circle, 1, 2, 3, 4, 5, 6], "rectangle" being polymodal's "square". The
  ternary counts (between, obtuse) are stored as count + 4, so there index 4 means 0.

A pickle can run any code while it loads, so it is read with an unpickler that builds numpy
arrays and numbers, lists and tuples only, and refuses any other global.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np

from .schema import DataError, Record, write_manifest
from .synthetic.sort_of_clevr import ANSWERS, FAMILIES, TEMPLATES, TERNARY_ANSWERS, decode, family_of

TERNARY_COUNTS = ("between", "obtuse")  # stored as count + 4
EXPECTED = {  # the answers each subtype can have: a check that the layout was read right
    "shape": ("square", "circle"), "closest": ("square", "circle"), "furthest": ("square", "circle"),
    "left": ("yes", "no"), "top": ("yes", "no"), "line": ("yes", "no"),
    "count": ("1", "2", "3", "4", "5", "6"), "between": ("0", "1", "2", "3", "4"), "obtuse": ("0", "1", "2", "3", "4"),
}


class ForbiddenGlobal(pickle.UnpicklingError):
    pass


def _latin1_only(text: str, encoding: str = "utf-8") -> bytes:
    """`_codecs.encode` as protocol-2 pickles use it for bytes, limited to that one use."""
    if encoding.replace("-", "").lower() != "latin1":
        raise ForbiddenGlobal(f"_codecs.encode with codec '{encoding}'")
    return text.encode("latin-1")


def _allowed_globals() -> dict[tuple[str, str], object]:
    try:
        from numpy._core import multiarray, numeric
    except ImportError:  # numpy < 2
        from numpy.core import multiarray, numeric
    allowed: dict[tuple[str, str], object] = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype,
                                              ("_codecs", "encode"): _latin1_only}
    for core in ("numpy.core", "numpy._core"):  # numpy 1 and numpy 2 write these names
        allowed[(f"{core}.multiarray", "_reconstruct")] = multiarray._reconstruct
        allowed[(f"{core}.multiarray", "scalar")] = multiarray.scalar
        allowed[(f"{core}.numeric", "_frombuffer")] = numeric._frombuffer
    for builtins in ("builtins", "__builtin__"):  # Python 3 and 2
        allowed[(builtins, "list")], allowed[(builtins, "tuple")] = list, tuple
    return allowed


class _ArraysOnly(pickle.Unpickler):
    allowed = _allowed_globals()

    def find_class(self, module: str, name: str):
        if (module, name) not in self.allowed:
            raise ForbiddenGlobal(f"{module}.{name}")
        return self.allowed[(module, name)]


def load_pickle(path: Path):
    """The object in `path`, refusing anything but arrays, numbers, strings, lists and tuples."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except OSError as err:
        raise DataError(f"{path}: cannot be read ({err.strerror})") from None
    if not data:
        raise DataError(f"{path}: empty file, not a Sort-of-CLEVR pickle")
    try:
        # latin1: what numpy arrays pickled by Python 2 (the first versions of the generator) need
        return _ArraysOnly(io.BytesIO(data), encoding="latin1").load()
    except ForbiddenGlobal as err:
        raise DataError(f"{path}: refused: the pickle asks for {err}, and only numpy arrays, numbers, lists "
                        "and tuples are allowed (loading a pickle can run code)") from None
    except Exception as err:  # a damaged pickle fails in many ways (EOFError, UnpicklingError, ValueError, ...)
        raise DataError(f"{path}: truncated or corrupt pickle ({type(err).__name__}: {err})") from None


def read_public_pickle(path: str | Path) -> dict[str, list[tuple[np.ndarray, list[dict]]]]:
    """{"train": [...], "test": [...]}, each image as (RGB (H, W, 3) uint8, its questions)."""
    path = Path(path)
    obj = load_pickle(path)
    if not (isinstance(obj, (tuple, list)) and len(obj) == 2 and all(isinstance(s, (list, tuple)) for s in obj)):
        raise DataError(f"{path}: not a Sort-of-CLEVR pickle: expected (train, test), two lists of images")
    out = {}
    for split, samples in zip(("train", "test"), obj):
        out[split] = []
        for i, sample in enumerate(samples):
            try:
                out[split].append(_sample(sample))
            except (ValueError, TypeError, IndexError, KeyError) as err:
                raise DataError(f"{path}: not a Sort-of-CLEVR pickle: {split} image {i}: {err}") from None
    if not out["train"] and not out["test"]:
        raise DataError(f"{path}: the pickle holds no images")
    return out


def _sample(sample) -> tuple[np.ndarray, list[dict]]:
    if not isinstance(sample, (tuple, list)) or len(sample) not in (3, 4):
        raise ValueError("expected (img, ternary, binary, non-relational) or (img, binary, non-relational)")
    img, *groups = sample
    groups = groups[::-1]  # stored ternary first: read non-relational, relational, ternary, as polymodal orders
    questions = []
    for family, group in zip(FAMILIES, groups):
        qs, answers = group
        if len(qs) != len(answers):
            raise ValueError(f"{len(qs)} {family} questions but {len(answers)} answers")
        questions += [_question(q, a, family) for q, a in zip(qs, answers)]
    return _rgb(img), questions


def _rgb(img) -> np.ndarray:
    """(H, W, 3) uint8 RGB from the generator's BGR array, float in [0, 1] or 0-255."""
    arr = np.asarray(img)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype.kind not in "fui":
        raise ValueError(f"the image must be an (H, W, 3) array of numbers, not {arr.dtype} {arr.shape}")
    if arr.dtype.kind == "f":
        arr = np.nan_to_num(arr) * (255.0 if arr.max(initial=0) <= 1.0 else 1.0)
        arr = np.rint(arr)
    return np.clip(arr, 0, 255).astype(np.uint8)[:, :, ::-1].copy()  # BGR -> RGB


def _question(vec, index, family: str) -> dict:
    colour, colour2, subtype = decode(np.asarray(vec).ravel().tolist())
    if family_of(subtype) != family:
        raise ValueError(f"a {family_of(subtype)} question among the {family} ones")
    index = int(index)
    text = str(index - 4) if subtype in TERNARY_COUNTS else (ANSWERS[index] if 0 <= index < len(ANSWERS) else "")
    if text not in EXPECTED[subtype]:
        raise ValueError(f"answer index {index} cannot answer a question of subtype '{subtype}'")
    q = {"text": TEMPLATES[subtype].format(c=colour, c2=colour2), "encoding": [int(v) for v in np.ravel(vec)],
         "answer": text, "answer_index": index, "relational": family != "non-relational", "family": family,
         "subtype": subtype, "colour": colour}
    if colour2 is not None:
        q["colour2"] = colour2
    return q


def convert_public_pickle(source: str | Path, out: str | Path, val: int = 200, progress: bool = True) -> dict:
    """Write `images/*.png`, `manifest.jsonl` and `dataset.json` to `out` from the public pickle.
    The pickle's test images make split "test"; the last `val` of its training images (at most a
    tenth of them) split "val"; the rest "train". Everything is read and checked before anything
    is written, and `out` gets the files whole or not at all. Returns the split counts."""
    from PIL import Image

    from ..utils import atomic_path, progress_bar, write_json

    source, out = Path(source), Path(out)
    data = read_public_pickle(source)
    if out.exists() and not out.is_dir():
        raise DataError(f"{out}: exists and is not a directory")
    n_val = min(max(val, 0), len(data["train"]) // 10)
    n_train = len(data["train"]) - n_val
    rows = [("train" if i < n_train else "val", "train", i, s) for i, s in enumerate(data["train"])]
    rows += [("test", "test", i, s) for i, s in enumerate(data["test"])]
    records = []
    with atomic_path(out, merge=out.is_dir()) as tmp, progress_bar(progress) as bar:
        (tmp / "images").mkdir(parents=True)
        task = bar.add_task("converting Sort-of-CLEVR", total=len(rows))
        for index, (split, origin, i, (rgb, questions)) in enumerate(rows):
            name = f"images/{index:06d}.png"
            Image.fromarray(rgb).save(tmp / name, format="PNG")
            records.append(Record(id=f"{index:06d}", split=split, image=name,
                                  text=[q["text"] for q in questions], labels=[q["answer"] for q in questions],
                                  attributes={"questions": questions,
                                              "source": {"pickle": source.name, "split": origin, "index": i}}))
            bar.advance(task)
        write_manifest(tmp / "manifest.jsonl", records)
        splits = {s: sum(r.split == s for r in records) for s in ("train", "val", "test")}
        families = [f for f in FAMILIES if any(q["family"] == f for r in records for q in r.attributes["questions"])]
        write_json(tmp / "dataset.json", {
            "name": "sort-of-clevr", "source": f"public Sort-of-CLEVR pickle {source.name}",
            "answers": list(TERNARY_ANSWERS if "ternary" in families else ANSWERS), "families": families,
            "splits": splits})
    return splits
