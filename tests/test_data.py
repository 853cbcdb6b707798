import json

import pytest
from PIL import Image

from polymodal.data import DataError, Record, load_records, write_manifest


def _image(path, colour=(255, 0, 0)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), colour).save(path)


def test_manifest_round_trip(tmp_path):
    _image(tmp_path / "a.png")
    _image(tmp_path / "b.png")
    recs = [Record(id="a", split="train", image="a.png", text=["red", "a red square"], attributes={"k": 1}),
            Record(id="b", split="test", image="b.png", text=["blue"], labels="blue")]
    write_manifest(tmp_path / "manifest.jsonl", recs)
    data = load_records(tmp_path)
    assert [r.to_json() for r in data.records] == [r.to_json() for r in recs]
    assert data.splits == {"train": 1, "test": 1}
    assert len(data.skips) == 0


def test_bad_records_are_skipped_counted_and_named(tmp_path):
    _image(tmp_path / "ok.png")
    lines = [json.dumps({"id": "ok", "image": "ok.png", "text": ["fine"]}),
             json.dumps({"id": "gone", "image": "missing.png", "text": ["x"]}),
             json.dumps({"id": "empty", "image": "ok.png", "text": ["   "]}),
             "{not json"]
    (tmp_path / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    data = load_records(tmp_path)
    assert [r.id for r in data.records] == ["ok"]
    assert len(data.skips) == 3
    summary = data.skips.summary()
    assert "missing.png: file not found" in summary and "record empty: empty caption" in summary
    assert "manifest.jsonl:4" in summary
    with pytest.raises(DataError, match="manifest.jsonl:4: bad record"):  # the first bad one read
        load_records(tmp_path, strict=True)


def test_coco_captions(tmp_path):
    _image(tmp_path / "img" / "1.jpg")
    _image(tmp_path / "img" / "2.jpg")
    coco = {"images": [{"id": 1, "file_name": "1.jpg"}, {"id": 2, "file_name": "2.jpg"}],
            "annotations": [{"image_id": 1, "caption": "a dog"}, {"image_id": 1, "caption": "a brown dog"},
                            {"image_id": 2, "caption": "a cat"}]}
    (tmp_path / "captions.json").write_text(json.dumps(coco))
    data = load_records(tmp_path / "captions.json", images=tmp_path / "img", split="val")
    assert {r.id: r.text for r in data} == {"1": ["a dog", "a brown dog"], "2": ["a cat"]}
    assert all(r.split == "val" for r in data)


def test_karpathy_split_file(tmp_path):
    _image(tmp_path / "val2014" / "x.jpg")
    _image(tmp_path / "train2014" / "y.jpg")
    karpathy = {"images": [
        {"filepath": "val2014", "filename": "x.jpg", "split": "restval", "cocoid": 7,
         "sentences": [{"raw": "A man."}, {"raw": "A person."}]},
        {"filepath": "train2014", "filename": "y.jpg", "split": "test", "cocoid": 8,
         "sentences": [{"raw": "A tree."}]}]}
    (tmp_path / "dataset_coco.json").write_text(json.dumps(karpathy))
    data = load_records(tmp_path / "dataset_coco.json")
    by_id = {r.id: r for r in data}
    assert by_id["7"].split == "train" and by_id["7"].text == ["A man.", "A person."]
    assert by_id["8"].split == "test" and by_id["8"].image == "train2014/y.jpg"


@pytest.mark.parametrize("suffix,sep", [(".csv", ","), (".tsv", "\t")])
def test_csv_and_tsv(tmp_path, suffix, sep):
    _image(tmp_path / "p.png")
    (tmp_path / f"pairs{suffix}").write_text(f"filepath{sep}title\np.png{sep}a red thing\n{sep}no image\n")
    data = load_records(tmp_path / f"pairs{suffix}")
    assert [(r.image, r.text) for r in data] == [("p.png", ["a red thing"])]
    assert len(data.skips) == 1


def test_csv_with_a_missing_column_fails_clearly(tmp_path):
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
    with pytest.raises(DataError, match="no column 'filepath'"):
        load_records(tmp_path / "bad.csv")


def test_class_folder(tmp_path):
    _image(tmp_path / "red_thing" / "1.png")
    _image(tmp_path / "blue" / "2.png")
    (tmp_path / "blue" / "notes.txt").write_text("not an image")
    data = load_records(tmp_path)
    assert sorted((r.labels, r.image) for r in data) == [("blue", "blue/2.png"), ("red thing", "red_thing/1.png")]
    assert len(data.skips) == 1


def test_missing_source_and_unknown_format(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load_records(tmp_path / "nope")
    (tmp_path / "x.parquet").write_text("")
    with pytest.raises(DataError, match="cannot tell"):
        load_records(tmp_path / "x.parquet")
