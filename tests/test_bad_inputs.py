"""The bad-input corpus (tests/bad_inputs.py) through every reader: index build from the CLI, the
folder / manifest / CSV / COCO dataset readers, `load_image` and `decode_image_bytes`. Each good file
is read, each bad one is skipped, counted and named (printably, whatever its name)."""

import csv
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from bad_inputs import NOT_UTF8_NAME, good_images, noise, png_claiming, write_corpus
from PIL import Image
from search_helpers import make_model

from polymodal.data import load_records
from polymodal.data.pairs import ImageTextPairs
from polymodal.data.schema import DataError, UnreadableFileError, printable_path
from polymodal.index import BuildConfig, Index, build_index, pipeline, sources
from polymodal.modalities.image_files import decode_image_bytes, load_image


@pytest.fixture
def corpus(tmp_path):
    return write_corpus(tmp_path.resolve() / "corpus")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_model(tmp_path_factory.mktemp("model") / "model")


# -- load_image and decode_image_bytes ----------------------------------------------------------------


def test_load_image_reads_every_good_file(corpus):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "palette images with transparency" warning, no bomb warning
        images = {what: load_image(path) for what, path in corpus.good.items()}
    assert all(im.mode == "RGB" for im in images.values())
    assert images["exif rotation"].size == (20, 24)  # the 24x20 JPEG, turned upright
    frame0 = np.asarray(noise(10).convert("P").convert("RGB"), np.int16)
    assert np.abs(np.asarray(images["animated"], np.int16) - frame0).mean() < 1  # the first frame
    sixteen = np.asarray(images["16-bit"])[..., 0]
    assert sixteen.min() == 0 and 200 < sixteen.max() <= 255 and len(np.unique(sixteen)) > 100  # scaled, not clipped


@pytest.mark.parametrize("what", ["not UTF-8 name", "symlink loop", "dangling symlink", "fifo", "decompression bomb",
                                  "huge dimensions", "empty", "truncated", "text as png"])
def test_load_image_names_every_bad_file(corpus, what):
    path, reason = corpus.bad[what]
    with pytest.raises(UnreadableFileError) as caught:
        load_image(path)
    assert reason in caught.value.reason
    assert str(caught.value) == f"{printable_path(path)}: {caught.value.reason}"
    str(caught.value).encode("utf-8")  # printable: no lone surrogate left
    assert "\n" not in str(caught.value)


def test_decode_image_bytes_for_uploads(corpus):
    for what, (name, data) in good_images().items():
        assert decode_image_bytes(data, name).mode == "RGB", what
    for what in ("decompression bomb", "huge dimensions", "empty", "truncated", "text as png"):
        path, reason = corpus.bad[what]
        with pytest.raises(DataError, match="^upload.png: " + reason.split(" (")[0]):
            decode_image_bytes(path.read_bytes(), "upload.png")
    with pytest.raises(DataError) as caught:
        decode_image_bytes(b"", "a\nb\udcff.png")
    assert str(caught.value) == "'a\\nb\\udcff.png': empty file"


def test_permission_denied_is_named(corpus, monkeypatch):
    real = Path.read_bytes

    def locked(self):  # tests run as root, which no file mode stops
        if self.name == "plain.png":
            raise PermissionError(13, "Permission denied", str(self))
        return real(self)

    monkeypatch.setattr(Path, "read_bytes", locked)
    with pytest.raises(UnreadableFileError, match="plain.png: permission denied"):
        load_image(corpus.good["plain"])


# -- index build ---------------------------------------------------------------------------------------


@pytest.mark.slow
def test_index_build_cli_indexes_the_good_and_names_the_bad(corpus, model_dir, tmp_path):
    out = tmp_path / "idx"
    run = subprocess.run([sys.executable, "-m", "polymodal.cli", "index", "build", str(corpus.folder),
                          "--model", str(model_dir), "--out", str(out), "--batch-size", "4"],
                         capture_output=True, text=True, errors="strict", timeout=300)
    assert run.returncode == 0, run.stderr
    n_good, n_bad = len(corpus.good), len(corpus.bad)
    assert f"added {n_good}, already indexed 0, duplicates 0, skipped {n_bad}" in run.stdout
    for what, (path, reason) in corpus.bad.items():
        assert f"skipped {printable_path(path)}: " in run.stdout, what
        line = next(line for line in run.stdout.splitlines() if f"skipped {printable_path(path)}: " in line)
        assert reason in line, what
    with Index.open(out) as idx:
        indexed = {row[0] for row in idx.db.execute("SELECT path FROM items")}
        assert indexed == {str(p) for p in corpus.good.values()}
        assert idx.skipped_count() == n_bad


def test_index_build_survives_vanishing_files_and_unlistable_folders(corpus, model_dir, tmp_path, monkeypatch):
    (corpus.folder / "locked").mkdir()
    noise(30).save(corpus.folder / "locked" / "inside.png")
    real_scandir, real_iter = os.scandir, sources.iter_source

    def scandir(path):  # simulates a folder without read permission (tests run as root)
        if os.fspath(path).endswith("locked"):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_scandir(path)

    def vanishing(source):  # the plain image disappears between listing and reading
        for item in real_iter(source):
            if item.path.endswith("plain.png"):
                os.remove(item.path)
            yield item

    monkeypatch.setattr(sources.os, "scandir", scandir)
    monkeypatch.setattr(pipeline, "iter_source", vanishing)
    report = build_index(BuildConfig(source=str(corpus.folder), out=str(tmp_path / "idx"), model=str(model_dir),
                                     batch_size=4, workers=0, progress=False))
    skipped = dict(report.skipped)
    assert report.added == len(corpus.good) - 1 and len(skipped) == len(corpus.bad) + 2
    assert skipped[str(corpus.good["plain"])] == "file not found"
    assert skipped[str(corpus.folder / "locked")] == "folder cannot be listed (Permission denied)"
    assert "skipped 'new\\nline.png'" not in report.summary(limit=100)  # good files are not listed
    assert all("\n" not in line[2:] for line in report.summary(limit=100).splitlines())


def test_strict_build_stops_at_the_first_bad_file(corpus, model_dir, tmp_path):
    with pytest.raises(DataError, match=r"bad-\\udcff\\udcfe-name.png': file name is not valid UTF-8"):
        build_index(BuildConfig(source=str(corpus.folder), out=str(tmp_path / "idx"), model=str(model_dir),
                                strict=True, progress=False))


# -- dataset readers -------------------------------------------------------------------------------------


def decoded(data) -> int:
    """Decode every record's image as training does; returns how many images were read."""
    return len(ImageTextPairs(data, image_size=16, progress=False, need_text=False))


def all_files(corpus) -> list[Path]:
    return [*corpus.good.values(), *(path for path, _ in corpus.bad.values())]


def check_skips(data, corpus, extra: int = 0) -> None:
    """Bad names and file types are skipped on loading, undecodable files when decoded; all named."""
    n_status = len(corpus.bad_by_status)
    assert len(data.skips) == n_status + extra
    assert decoded(data) == len(corpus.good)
    assert len(data.skips) == len(corpus.bad) + extra
    named = "\n".join(where for where, _ in data.skips.skipped)
    for what, (path, _reason) in corpus.bad.items():
        assert printable_path(path) in named, what


def test_folder_reader(tmp_path):
    classes = tmp_path.resolve() / "classes"
    write_corpus(classes / "odd_files")
    corpus = write_corpus(classes / "more_files")  # two classes, each holding the corpus
    data = load_records(classes, format="folder")
    assert data.splits == {"test": 2 * len(corpus.good) + 2 * len(corpus.bad) - 2 * len(corpus.bad_by_status)}
    assert len(data.skips) == 2 * len(corpus.bad_by_status)
    assert decoded(data) == 2 * len(corpus.good)
    assert len(data.skips) == 2 * len(corpus.bad)
    assert {r.labels for r in data.records} == {"odd files", "more files"}


def test_manifest_reader(corpus):
    lines = [json.dumps({"id": f"r{i}", "image": os.fsencode(p.name).decode("utf-8", "surrogateescape")})
             for i, p in enumerate(all_files(corpus))]
    lines += ['{"id": "x", "image": 7}', "not json"]
    (corpus.folder / "manifest.jsonl").write_bytes(("\n".join(lines) + "\n").encode() + b'{"id": "\xff"}\n')
    data = load_records(corpus.folder)
    check_skips(data, corpus, extra=3)
    assert {why for _, why in data.skips.skipped[:3]} == {
        "bad record ('image' and 'audio' must be paths, 'text' a string or a list of strings)",
        "bad record (Expecting value: line 1 column 1 (char 0))", "bad record (not valid UTF-8)"}


def test_csv_reader(corpus):
    table = corpus.folder / "pairs.csv"
    with table.open("w", newline="", encoding="utf-8", errors="surrogateescape") as f:
        writer = csv.writer(f)
        writer.writerow(["filepath", "title"])
        for i, p in enumerate(all_files(corpus)):
            writer.writerow([p.name, f"caption {i}"])
        writer.writerow(["", "no image"])
    with table.open("ab") as f:
        f.write(b"plain.png,caption \xff not utf-8\n")
    data = load_records(table)
    check_skips(data, corpus, extra=2)


def test_coco_reader(corpus):
    names = [os.fsdecode(os.fsencode(p.name)) for p in all_files(corpus)]
    images = [{"id": i, "file_name": n} for i, n in enumerate(names)] + [{"id": 99}, "not an object"]
    annotations = [{"image_id": i, "caption": f"caption {i}"} for i in range(len(names))] + [{"caption": "orphan"}]
    (corpus.folder / "captions.json").write_text(json.dumps({"images": images, "annotations": annotations}))
    data = load_records(corpus.folder / "captions.json")
    check_skips(data, corpus, extra=3)


def test_not_utf8_name_is_really_on_disk(corpus):
    assert NOT_UTF8_NAME in os.listdir(os.fsencode(corpus.folder))
    assert isinstance(Image.open(corpus.bad["not UTF-8 name"][0]), Image.Image)  # a good image; its name is bad


def test_a_contact_sheet_frames_files_that_went_bad_after_indexing(tmp_path):
    from polymodal.index.grid import contact_sheet
    from polymodal.index.store import Hit

    good, bomb = tmp_path / "good.png", tmp_path / "bomb.png"
    noise(0).save(good)
    bomb.write_bytes(png_claiming(60_000, 60_000))
    hits = [Hit(i, 0.9, str(p), None, "image") for i, p in enumerate([good, bomb, tmp_path / "gone.png"])]
    sheet = contact_sheet(hits, tmp_path / "sheet.png", thumb=32, columns=3)
    with Image.open(sheet) as img:
        pixels = np.asarray(img.convert("RGB"))
    framed = [(pixels[9:39, x + 1:x + 31] != 255).any() for x in (8, 48, 88)]  # inside each cell, frame excluded
    assert framed[0] and not framed[1] and not framed[2]  # the good image drawn, the others left empty
    assert (pixels[8, 48:80] == [255, 0, 0]).all(axis=-1).any()  # the bad one's red frame
