"""Audio in the search engine: an index of images and audio files (bad audio skipped and named),
a clip in the index finds itself first through the Python API, `polymodal search --audio` and
POST /search/audio, bad uploads get a 4xx with one line, and a model without an audio tower gets
one clear error wherever audio reaches it. (The page's record button and upload: test_web.py.)"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from search_helpers import make_audio_collection, make_index, make_mixed_index, make_model, sound

import polymodal
from polymodal.errors import DataError
from polymodal.index import BuildConfig, Index, build_index
from polymodal.modalities.audio_files import write_wav

pytest.importorskip("soundfile")
CLI = [sys.executable, "-m", "polymodal.cli"]


@pytest.fixture(scope="module")
def mixed(tmp_path_factory, shapes_dir):
    """(model directory, index directory, {name: audio file in the index}, the loaded model)."""
    model_dir, index, sounds = make_mixed_index(tmp_path_factory.mktemp("audio-search"), shapes_dir)
    return model_dir, index, sounds, polymodal.load(model_dir)


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "250"}  # a table row on one line, whole file names in it
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, env=env)


# -- indexing ----------------------------------------------------------------------------------------


def test_an_index_holds_images_and_audio_and_names_the_bad_audio(mixed):
    _, index, sounds, _ = mixed
    with Index.open(index) as idx:
        info = idx.info()
        rows = {path: (caption, modality) for path, caption, modality in
                idx.db.execute("SELECT path, caption, modality FROM items")}
        skipped = dict(idx.skipped())
    assert info["by_modality"] == {"image": 4, "audio": 4} and info["items"] == 8
    assert {path for path, (_, kind) in rows.items() if kind == "audio"} == {str(p) for p in sounds.values()}
    assert rows[str(sounds["tone"])][0] == "a pure tone at 440 Hz"  # the sidecar caption, as for images
    media = sounds["tone"].parent
    assert skipped == {str(media / "empty.wav"): "empty file",
                       str(media / "silent.wav"): "silent audio (peak below -80 dBFS)",
                       str(media / "notes.wav"): skipped[str(media / "notes.wav")]}
    assert skipped[str(media / "notes.wav")].startswith("not a readable audio file")


def test_media_option_and_a_model_without_an_audio_tower(mixed, tmp_path):
    model_dir, index, sounds, _ = mixed
    media = sounds["tone"].parent
    only_audio = build_index(BuildConfig(source=str(media), out=str(tmp_path / "audio"), model=str(model_dir),
                                         media="audio", progress=False))
    assert only_audio.added == 4 and len(only_audio.skipped) == 3
    image_model = make_model(tmp_path / "image-model")  # image and text towers only
    images_only = build_index(BuildConfig(source=str(media), out=str(tmp_path / "images"), model=str(image_model),
                                          progress=False))
    assert images_only.added == 4 and not images_only.skipped  # the audio files are left out, and said so
    assert "left out 7 audio file(s)" in images_only.summary() and "has no audio tower" in images_only.summary()
    with pytest.raises(DataError, match="has no audio tower, so it cannot index audio files"):
        build_index(BuildConfig(source=str(media), out=str(tmp_path / "x"), model=str(image_model), media="audio",
                                progress=False))
    assert not (tmp_path / "x").exists()  # refused before anything was written


def test_cli_build_of_audio_with_an_image_model_fails_with_one_line(tmp_path):
    folder = tmp_path / "sounds"
    folder.mkdir()
    write_wav(folder / "tone.wav", sound("tone"))
    image_model = make_model(tmp_path / "image-model")
    proc = run_cli("index", "build", folder, "--model", image_model, "--out", tmp_path / "idx")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "its 1 audio file(s) cannot be indexed" in proc.stderr and "has no audio tower" in proc.stderr
    assert proc.stderr.count("error:") == 1 and not (tmp_path / "idx").exists()  # one message (rich wraps it)


# -- searching ---------------------------------------------------------------------------------------


def test_a_clip_in_the_index_finds_itself_first(mixed):
    _, index, sounds, model = mixed
    with Index.open(index) as idx:
        for name, path in sounds.items():
            hits = idx.search(model, audio=path, k=3)
            assert hits[0].path == str(path) and hits[0].modality == "audio", name
            assert hits[0].score == pytest.approx(1.0, abs=1e-4) and hits[1].score < 0.999, name
        # A waveform in memory is the same query as its file.
        from polymodal.modalities.audio_files import load_audio

        assert idx.search(model, audio=load_audio(sounds["chirp"]), k=1)[0].path == str(sounds["chirp"])
        image = next(p for p, kind in idx.db.execute("SELECT path, modality FROM items") if kind == "image")
        assert idx.search(model, image=image, k=1)[0].path == image  # images still find themselves
        everything = idx.search(model, text="a small red circle", k=8)
        assert {h.modality for h in everything} == {"image", "audio"}  # one space: text reaches both
        with pytest.raises(ValueError, match="one query"):
            idx.search(model, text="a red circle", audio=sounds["tone"])


def test_cli_search_audio_prints_the_clip_first(mixed, tmp_path):
    _, index, sounds, _ = mixed
    proc = run_cli("search", index, "--audio", sounds["noise"], "-k", "3", "--json", "--grid", tmp_path / "grid.png")
    assert proc.returncode == 0, proc.stderr
    hits = json.loads(proc.stdout)
    assert hits[0]["path"] == str(sounds["noise"]) and hits[0]["modality"] == "audio" and hits[0]["score"] > 0.999
    assert (tmp_path / "grid.png").stat().st_size > 0  # audio results get a cell of their own
    table = run_cli("search", index, "--audio", sounds["tone"], "-k", "2")
    assert table.returncode == 0, table.stderr
    first = next(line for line in table.stdout.splitlines() if line.strip(" │|").startswith("1 "))
    assert "1.000" in first and "audio" in first and str(sounds["tone"]) in first and "a pure tone" in first


def test_cli_search_audio_errors_are_one_line(mixed, tmp_path, shapes_dir):
    _, index, sounds, _ = mixed
    (tmp_path / "notes.wav").write_text("not a sound")
    bad = run_cli("search", index, "--audio", tmp_path / "notes.wav")
    assert bad.returncode == 2 and "notes.wav: not a readable audio file" in bad.stderr
    assert "Traceback" not in bad.stderr
    both = run_cli("search", index, "a red circle", "--audio", sounds["tone"])
    assert both.returncode == 2 and "one of them" in both.stderr
    _, _, image_index = make_index(tmp_path / "images", shapes_dir, n=3)  # built with a model without audio
    no_tower = run_cli("search", image_index, "--audio", sounds["tone"])
    assert no_tower.returncode == 2 and "has no audio tower" in no_tower.stderr, no_tower.stderr
    assert no_tower.stderr.count("error:") == 1 and "Traceback" not in no_tower.stderr


# -- the HTTP server ---------------------------------------------------------------------------------

fastapi = pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402
from test_server import wait_ready  # noqa: E402

from polymodal.server.app import ServerConfig, create_app  # noqa: E402

LIMIT = 1_500_000


@pytest.fixture(scope="module")
def client(mixed):
    _, index, _, model = mixed
    with TestClient(create_app(ServerConfig(index=str(index), max_upload_bytes=LIMIT), model=model)) as c:
        wait_ready(c)
        yield c


def upload(path, name=None, mime="audio/wav"):
    return {"file": (name or path.name, path.read_bytes(), mime)}


def test_post_search_audio_finds_the_clip_and_serves_it_back(client, mixed):
    _, _, sounds, model = mixed
    assert "audio" in client.get("/health").json()["modalities"]
    for name, path in sounds.items():
        response = client.post("/search/audio", files=upload(path), data={"k": "3"})
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["query"] == path.name and len(body["hits"]) == 3
        assert body["hits"][0]["path"] == str(path) and body["hits"][0]["score"] > 0.999, name
    served = client.get(client.post("/search/audio", files=upload(sounds["tone"])).json()["hits"][0]["url"])
    assert served.status_code == 200 and served.headers["content-type"].startswith("audio/")
    assert served.content == sounds["tone"].read_bytes()
    embedded = client.post("/embed/audio", files=upload(sounds["speech"])).json()
    np.testing.assert_allclose(embedded["embeddings"], model.encode_audio([sounds["speech"]]).numpy(), atol=1e-5)


def long_wav(tmp_path, seconds: float):
    import soundfile as sf

    path = tmp_path / "long.wav"
    sf.write(str(path), np.full(int(seconds * 8000), 0.1, np.float32), 8000, subtype="PCM_U8")
    return path


@pytest.mark.parametrize("make,status,reason", [
    (lambda tmp: ("empty.wav", b""), 400, "empty.wav: empty file"),
    (lambda tmp: ("notes.wav", b"hello, not a sound"), 400, "notes.wav: not a readable audio file"),
    (lambda tmp: ("photo.png", b"\x89PNG\r\n\x1a\n" + b"0" * 100), 400, "not a readable audio file"),
    (lambda tmp: ("silent.wav", silent_wav(tmp)), 400, "silent audio"),
    (lambda tmp: ("long.wav", long_wav(tmp, 61).read_bytes()), 400, "too long (61 s; the limit is 60 s)"),
    (lambda tmp: ("big.wav", b"RIFF" + b"0" * (LIMIT + 10)), 413, "upload limit"),
])
def test_bad_audio_uploads_get_a_4xx_with_one_line(client, tmp_path, make, status, reason):
    name, data = make(tmp_path)
    response = client.post("/search/audio", files={"file": (name, data, "audio/wav")}, data={"k": "2"})
    detail = response.json()["detail"]
    assert response.status_code == status and reason in detail and "\n" not in detail, response.text


def silent_wav(tmp_path) -> bytes:
    write_wav(tmp_path / "silent.wav", np.zeros(16000, np.float32))
    return (tmp_path / "silent.wav").read_bytes()


def test_bad_audio_requests_are_4xx(client, mixed):
    _, _, sounds, _ = mixed
    assert client.post("/search/audio", data={"k": "2"}).status_code == 422  # no file
    assert client.post("/search/audio", files=upload(sounds["tone"]), data={"k": "0"}).status_code == 422
    assert client.post("/search/audio", files=upload(sounds["tone"]), data={"k": ""}).status_code == 422


def test_audio_routes_are_in_the_openapi_document(client):
    paths = client.get("/openapi.json").json()["paths"]
    for route in ("/search/audio", "/embed/audio"):
        post = paths[route]["post"]
        assert {"400", "404", "413", "422", "503"} <= set(post["responses"])
        form = client.get("/openapi.json").json()["components"]["schemas"][
            post["requestBody"]["content"]["multipart/form-data"]["schema"]["$ref"].split("/")[-1]]
        assert "An audio file (flac, mp3, oga, ogg, opus, wav" in form["properties"]["file"]["description"]


def test_a_server_whose_model_has_no_audio_tower_says_so(tmp_path, shapes_dir, mixed):
    _, _, sounds, _ = mixed
    model_dir, _, index = make_index(tmp_path, shapes_dir, n=3)
    with TestClient(create_app(ServerConfig(index=str(index)), model=polymodal.load(model_dir))) as c:
        assert wait_ready(c)["modalities"] == ["image", "text"]
        response = c.post("/search/audio", files=upload(sounds["tone"]))
        assert response.status_code == 404 and "has no audio tower" in response.json()["detail"]
        assert c.post("/embed/audio", files=upload(sounds["tone"])).status_code == 404
        assert c.post("/search", json={"text": "a red circle", "k": 2}).status_code == 200  # the rest still works


def test_audio_collection_helper_writes_what_it_says(tmp_path):
    """The helper's formats decode (FLAC and Ogg Vorbis through the same reader as wav)."""
    from polymodal.modalities.audio_files import load_audio

    sounds = make_audio_collection(tmp_path / "sounds")
    seconds = {name: len(load_audio(path)) / 16000 for name, path in sounds.items()}
    assert seconds["tone"] == pytest.approx(1.0) and seconds["chirp"] == pytest.approx(1.5, abs=0.01)
    assert seconds["noise"] == pytest.approx(0.7, abs=0.01) and 0.5 < seconds["speech"] < 3


@pytest.mark.slow
def test_ray_build_of_images_and_audio_equals_the_local_build(mixed, tmp_path):
    ray = pytest.importorskip("ray")
    model_dir, index, sounds, _ = mixed
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        report = build_index(BuildConfig(source=str(sounds["tone"].parent), out=str(tmp_path / "idx"),
                                         model=str(model_dir), batch_size=4, ray="local", ray_actors=1, progress=False))
    finally:
        ray.shutdown()
    assert report.added == 8 and len(report.skipped) == 3

    def by_path(root):
        with Index.open(root) as idx:
            ids, vectors = idx.load_vectors()
            return {idx.item_by_id(int(i))[0]: (idx.item_by_id(int(i))[2], v) for i, v in zip(ids, vectors)}

    local, remote = by_path(index), by_path(tmp_path / "idx")
    assert local.keys() == remote.keys()
    for path, (modality, vector) in local.items():
        assert remote[path][0] == modality
        np.testing.assert_allclose(remote[path][1], vector, atol=1e-5)
