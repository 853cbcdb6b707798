"""The public Sort-of-CLEVR generator's pickle, read safely and converted; ternary questions."""

import json
import os
import pickle

import cv2
import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from polymodal.cli import app
from polymodal.data.formats import load_records
from polymodal.data.schema import DataError
from polymodal.data.sort_of_clevr_pickle import convert_public_pickle
from polymodal.data.synthetic.sort_of_clevr import ANSWERS, answer
from polymodal.data.vqa import QuestionVocab, answer_vocabulary, vqa_tensors

BGR = [(0, 0, 255), (0, 255, 0), (255, 0, 0), (0, 156, 255), (128, 128, 128), (0, 255, 255)]  # red .. yellow


def public_image(rng) -> np.ndarray:
    """(75, 75, 3) BGR uint8, shapes drawn with OpenCV as the public generator draws them."""
    img = np.full((75, 75, 3), 255, dtype=np.uint8)
    for k, colour in enumerate(BGR):
        x, y = 8 + 12 * k, int(rng.integers(6, 69))
        if k % 2:
            cv2.rectangle(img, (x - 5, y - 5), (x + 5, y + 5), colour, -1)
        else:
            cv2.circle(img, (x, y), 5, colour, -1)
    return img


def question(width: int, colour: int, family: int, subtype: int, colour2: int | None = None) -> np.ndarray:
    """A question vector in the public layout: 11 numbers (colour, type 6-7, subtype 8-10) or 18
    (colour, second colour 6-11, type 12-14, subtype 15-17)."""
    vec = np.zeros(width)
    vec[colour] = 1
    if colour2 is not None:
        vec[6 + colour2] = 1
    type_at = 12 if width == 18 else 6
    vec[type_at + family] = 1
    vec[type_at + (3 if width == 18 else 2) + subtype] = 1
    return vec


def public_sample(rng, ternary: bool, as_float: bool) -> tuple:
    width = 18 if ternary else 11
    img = public_image(rng)
    # (question, answer index): red shape = rectangle (2); green left = no (1); blue top = yes (0)
    norel = ([question(width, 0, 0, 0), question(width, 1, 0, 1), question(width, 2, 0, 2)], [2, 1, 0])
    # orange closest = circle (3); grey count = 4 objects (index 7)
    binary = ([question(width, 3, 1, 0), question(width, 4, 1, 2)], [3, 7])
    sample = (img / 255.0 if as_float else img, binary, norel)
    if ternary:
        # red & blue between: 2 (index 6); green & yellow on the line: no (1); orange & grey obtuse: 0 (index 4)
        tern = ([question(18, 0, 2, 0, 2), question(18, 1, 2, 1, 5), question(18, 3, 2, 2, 4)], [6, 1, 4])
        sample = (sample[0], tern, binary, norel)
    return sample


def write_public_pickle(path, ternary=True, as_float=True, n_train=10, n_test=2, protocol=4):
    rng = np.random.default_rng(0)
    data = ([public_sample(rng, ternary, as_float) for _ in range(n_train)],
            [public_sample(rng, ternary, as_float) for _ in range(n_test)])
    with open(path, "wb") as f:
        pickle.dump(data, f, protocol=protocol)
    return data


@pytest.mark.parametrize("protocol", [2, 5])
def test_the_three_family_pickle_converts_to_a_vqa_dataset(tmp_path, protocol):
    source = tmp_path / "sort-of-clevr.pickle"
    train, test = write_public_pickle(source, protocol=protocol)
    out = tmp_path / "soc"
    run = CliRunner().invoke(app, ["data", "convert", str(source), str(out)])
    assert run.exit_code == 0, run.output
    data = load_records(out)
    assert data.splits == {"train": 9, "val": 1, "test": 2}  # a tenth of the training images make val

    rec = data.records[10]  # the first test image
    assert rec.split == "test" and rec.attributes["source"] == {"pickle": source.name, "split": "test", "index": 0}
    rgb = np.asarray(Image.open(out / rec.image))
    assert np.array_equal(rgb, np.rint(test[0][0] * 255).astype(np.uint8)[:, :, ::-1])  # BGR -> RGB
    assert tuple(rgb[rgb.shape[0] // 2, 0]) == (255, 255, 255)

    qs = rec.attributes["questions"]
    assert [q["family"] for q in qs] == ["non-relational"] * 3 + ["relational"] * 2 + ["ternary"] * 3
    assert [q["relational"] for q in qs] == [False] * 3 + [True] * 5
    assert [(q["text"], q["answer"]) for q in qs] == [
        ("what is the shape of the red object?", "square"),
        ("is the green object on the left?", "no"),
        ("is the blue object at the top?", "yes"),
        ("what is the shape of the object closest to the orange object?", "circle"),
        ("how many objects have the same shape as the grey object?", "4"),
        ("how many objects are between the red object and the blue object?", "2"),
        ("is there an object on the line through the green object and the yellow object?", "no"),
        ("how many objects form an obtuse triangle with the orange object and the grey object?", "0"),
    ]
    assert qs[5]["colour"] == "red" and qs[5]["colour2"] == "blue" and qs[5]["answer_index"] == 6
    assert qs[5]["encoding"] == question(18, 0, 2, 0, 2).astype(int).tolist()
    assert rec.text == [q["text"] for q in qs] and rec.labels == [q["answer"] for q in qs]

    # What the fusion lab does with it: a vocabulary, answers, tensors.
    train_set = data.split("train")
    vocab = QuestionVocab.build(t for r in train_set for t in r.text)
    answers = answer_vocabulary(train_set)
    assert {"0", "2", "4", "square", "circle", "yes", "no"} <= set(answers)
    tensors = vqa_tensors(train_set, vocab, answers, 75)
    assert tensors.images.shape == (9, 3, 75, 75) and tensors.questions.shape[:2] == (9, 8)
    assert (tensors.answers >= 0).all()
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["families"] == ["non-relational", "relational", "ternary"]


def test_the_older_two_family_pickle_with_uint8_images(tmp_path):
    source = tmp_path / "old.pkl"
    train, _ = write_public_pickle(source, ternary=False, as_float=False, n_train=3, n_test=1, protocol=2)
    splits = convert_public_pickle(source, tmp_path / "soc", progress=False)
    assert splits == {"train": 3, "val": 0, "test": 1}  # a tenth of 3 images: no val split
    data = load_records(tmp_path / "soc")
    rec = data.records[0]
    rgb = np.asarray(Image.open(tmp_path / "soc" / rec.image))
    assert np.array_equal(rgb, train[0][0][:, :, ::-1])
    assert [q["answer"] for q in rec.attributes["questions"]] == ["square", "no", "yes", "circle", "4"]
    assert all(len(q["encoding"]) == 11 and "colour2" not in q for q in rec.attributes["questions"])
    assert answer_vocabulary(data.split("train")) == list(ANSWERS)


class RunsCode:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


@pytest.mark.parametrize("case", ["forbidden global", "empty", "truncated", "missing", "not a dataset",
                                  "bad answer"])
def test_bad_pickles_are_refused_with_one_line_and_nothing_written(tmp_path, monkeypatch, case):
    monkeypatch.chdir(tmp_path)
    source = tmp_path / "sort-of-clevr.pickle"
    if case == "forbidden global":
        source.write_bytes(pickle.dumps(([(RunsCode(),)], [])))
        expect = r"refused: the pickle asks for (posix|os)\.system, and only numpy arrays"
    elif case == "empty":
        source.write_bytes(b"")
        expect = "empty file"
    elif case == "truncated":
        write_public_pickle(source, n_train=2, n_test=1)
        source.write_bytes(source.read_bytes()[: source.stat().st_size // 2])
        expect = "truncated or corrupt pickle"
    elif case == "missing":
        expect = "file not found"
    elif case == "not a dataset":
        source.write_bytes(pickle.dumps({"train": [1, 2]}))
        expect = r"not a Sort-of-CLEVR pickle: expected \(train, test\)"
    else:
        train, test = write_public_pickle(source, n_train=2, n_test=1)
        train[1][1][1][1] = 9  # a ternary "on the line" question answered "6"
        source.write_bytes(pickle.dumps((train, test)))
        expect = "train image 1: answer index 9 cannot answer a question of subtype 'line'"
    with pytest.raises(DataError, match=expect) as err:
        convert_public_pickle(source, tmp_path / "out", progress=False)
    assert str(err.value).startswith(f"{source}: ") and "\n" not in str(err.value)
    assert not (tmp_path / "out").exists() and not (tmp_path / "pwned").exists()
    assert [p.name for p in tmp_path.iterdir()] == ([source.name] if case != "missing" else [])  # no temp dirs


def test_ternary_answers_on_a_hand_built_scene():
    #   red (10,10) . . . . . . orange (40,10)
    #          blue (25,25)                     grey (70,30)
    #                        green (40,40)
    #   yellow (10,60)
    scene = [("red", 10, 10), ("green", 40, 40), ("blue", 25, 25), ("orange", 40, 10), ("grey", 70, 30),
             ("yellow", 10, 60)]
    objects = [{"colour": c, "shape": "square", "x": x, "y": y} for c, x, y in scene]
    expected = {
        # red-green: the box [10,40]x[10,40] holds blue and orange (on its corner); blue lies on the line
        # y = x; orange makes a right angle (counts), grey an obtuse one at green, blue no triangle
        # (collinear), yellow an acute one.
        ("red", "green"): {"between": "2", "line": "yes", "obtuse": "2"},
        # red-yellow: the vertical line x = 10 and its box hold no other centre; blue makes an obtuse
        # angle at itself, orange a right angle at red; green and grey acute triangles.
        ("red", "yellow"): {"between": "0", "line": "no", "obtuse": "2"},
        # blue-orange: the line y = 50 - x passes 20 px below yellow (10,60) and further from the rest.
        ("blue", "orange"): {"line": "no"},
        # grey-yellow: the line y = 65 - x/2 passes 5 px above green (40,40): within the 12 px band.
        ("grey", "yellow"): {"line": "yes"},
    }
    for (first, second), answers in expected.items():
        for subtype, value in answers.items():
            assert answer(objects, first, subtype, second) == value, (first, second, subtype)
            assert answer(objects, second, subtype, first) == value  # symmetric in the two objects
