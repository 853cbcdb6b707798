"""The REST API through FastAPI's TestClient: search, embeddings, zero-shot, files, clip-retrieval's
endpoints (with a request shaped exactly as its ClipClient sends it), bad uploads, the API key."""

import base64
import json
import time

import numpy as np
import pytest
from search_helpers import make_index

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

import polymodal  # noqa: E402
from polymodal.server.app import ServerConfig, create_app  # noqa: E402


@pytest.fixture(scope="module")
def served(tmp_path_factory, shapes_dir):
    root = tmp_path_factory.mktemp("served")
    model_dir, images, _ = make_index(root, shapes_dir, n=20)
    model = polymodal.load(model_dir)
    app = create_app(ServerConfig(index=str(root / "idx"), max_upload_bytes=200_000), model=model)
    with TestClient(app) as client:
        wait_ready(client)
        yield client, root, images, model


def wait_ready(client, timeout: float = 30.0) -> dict:
    """/health until it says ready (the model and index load in the background)."""
    deadline = time.monotonic() + timeout
    while (response := client.get("/health")).status_code != 200:
        assert response.status_code == 503 and response.json()["status"] == "loading", response.text
        assert time.monotonic() < deadline, "the server did not become ready"
        time.sleep(0.02)
    return response.json()


def png_bytes(path) -> bytes:
    return path.read_bytes()


def test_health_and_docs(served):
    client, *_ = served
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["ready"] and health["model_loaded"] and health["index_loaded"]
    assert (health["items"], health["dim"], health["kind"], health["index_generation"]) == (20, 64, "flat", 1)
    assert "/knn-service" in client.get("/openapi.json").json()["paths"]
    assert "<form" in client.get("/").text


def test_text_search_matches_the_python_api(served):
    client, root, _, model = served
    body = client.post("/search", json={"text": "a small red circle", "k": 5}).json()
    with polymodal.Index.open(root / "idx") as idx:
        expected = idx.search(model, text="a small red circle", k=5)
    assert [h["id"] for h in body["hits"]] == [h.id for h in expected]
    served_file = client.get(body["hits"][0]["url"])
    assert served_file.status_code == 200 and served_file.content == open(expected[0].path, "rb").read()


def test_image_upload_finds_itself(served):
    client, _, images, _ = served
    target = sorted(images.glob("test-*.png"))[4]
    hits = client.post("/search/image", files={"file": ("q.png", png_bytes(target), "image/png")},
                       data={"k": "3"}).json()["hits"]
    assert hits[0]["path"] == str(target) and hits[0]["score"] > 0.999 and len(hits) == 3


def test_embed_and_classify(served):
    client, _, images, model = served
    out = client.post("/embed/text", json={"texts": ["a red circle", "a blue square"]}).json()
    np.testing.assert_allclose(out["embeddings"], model.encode_text(["a red circle", "a blue square"]).numpy(),
                               atol=1e-5)
    target = sorted(images.glob("test-*.png"))[0]
    emb = client.post("/embed/image", files={"file": ("a.png", png_bytes(target))}).json()["embeddings"]
    np.testing.assert_allclose(emb, model.encode_image([target]).numpy(), atol=1e-5)
    labels = client.post("/classify", files={"file": ("a.png", png_bytes(target))},
                         data={"labels": "red circle, blue square, green star"}).json()["labels"]
    assert {x["label"] for x in labels} == {"red circle", "blue square", "green star"}
    assert sum(x["probability"] for x in labels) == pytest.approx(1.0, abs=1e-4)


@pytest.mark.parametrize("files,status,reason", [
    ({"file": ("notes.txt", b"hello, not an image", "text/plain")}, 400, "not a readable image"),
    ({"file": ("empty.png", b"", "image/png")}, 400, "empty file"),
    ({"file": ("big.png", b"\x89PNG" + b"0" * 300_000, "image/png")}, 413, "upload limit"),
    ({}, 422, "file"),
])
def test_bad_uploads_get_a_4xx_with_a_reason(served, files, status, reason):
    client, *_ = served
    response = client.post("/search/image", files=files, data={"k": "3"})
    assert response.status_code == status and reason in json.dumps(response.json())


def test_bad_requests_are_4xx(served):
    client, _, images, _ = served
    upload = {"file": ("q.png", sorted(images.glob("*.png"))[0].read_bytes(), "image/png")}
    assert client.post("/search/image", files=upload, data={"k": ""}).status_code == 422  # not the default k
    assert client.post("/search", json={"text": "", "k": 5}).status_code == 422
    assert client.post("/search", json={"text": "x", "k": 0}).status_code == 422
    assert client.post("/search", json={"text": " \t\x1c", "k": 5}).status_code == 422  # no word: as the schema says
    assert client.post("/classify", files={"file": ("a.png", b"x")}, data={"labels": "one, "}).status_code == 422
    assert client.get("/items/999999/file").status_code == 404


@pytest.mark.parametrize("path,kwargs", [
    ("/search", {"content": b"\x80\xff not UTF-8", "headers": {"Content-Type": "application/json"}}),
    ("/search", {"content": b'{"text": "a red', "headers": {"Content-Type": "application/json"}}),
    ("/embed/text", {"content": b"[1, 2", "headers": {"Content-Type": "application/json"}}),
    ("/knn-service", {"content": b"\x80\xff"}),
    ("/knn-service", {"content": b""}),
    ("/search/image", {"content": b"--x\r\nnot a form",
                       "headers": {"Content-Type": "multipart/form-data; boundary=x"}}),
    ("/classify", {"content": b"k=3", "headers": {"Content-Type": "application/x-www-form-urlencoded"}}),
])
def test_malformed_bodies_get_a_status_the_document_declares(served, path, kwargs):
    client, *_ = served
    response = client.post(path, **kwargs)
    declared = client.get("/openapi.json").json()["paths"][path]["post"]["responses"]
    assert 400 <= response.status_code < 500 and str(response.status_code) in declared, response.text


def test_the_app_starts_again(served):
    _, root, _, model = served
    app = create_app(ServerConfig(index=str(root / "idx")), model=model)
    for _ in range(2):  # a second start opens the index again on a new event loop
        with TestClient(app) as client:
            wait_ready(client)
            assert client.post("/search", json={"text": "a red circle", "k": 2}).status_code == 200


def clip_client_request(**query) -> str:
    """The body clip-retrieval's ClipClient.query() posts (clip_client.py), sent as it sends it:
    `requests.post(url, data=json.dumps(...))`, a str body without a Content-Type header."""
    body = {"text": None, "image": None, "image_url": None, "embedding_input": None, "deduplicate": True,
            "use_safety_model": True, "use_violence_detector": True, "indice_name": "idx", "use_mclip": False,
            "aesthetic_score": 9, "aesthetic_weight": 0.5, "modality": "image", "num_images": 4,
            "num_result_ids": 4, "verbose": False}
    body.update(query)
    return json.dumps(body)


def test_clip_retrieval_endpoints(served):
    client, _, images, _ = served
    assert client.get("/indices-list").json() == ["idx"]
    by_text = client.post("/knn-service", content=clip_client_request(text="a red circle"))
    assert by_text.status_code == 200
    results = by_text.json()
    assert len(results) == 4 and set(results[0]) >= {"id", "similarity", "url", "caption"}
    assert results[0]["similarity"] >= results[-1]["similarity"]
    target = sorted(images.glob("test-*.png"))[2]
    b64 = base64.b64encode(target.read_bytes()).decode()
    by_image = client.post("/knn-service", content=clip_client_request(image=b64)).json()
    assert by_image[0]["image_path"] == str(target) and by_image[0]["similarity"] > 0.999
    bad = client.post("/knn-service", content=clip_client_request(image="@@not base64@@"))
    assert bad.status_code == 400 and "base64" in bad.json()["detail"]
    other = client.post("/knn-service", content=clip_client_request(text="x", indice_name="laion5B"))
    assert other.status_code == 404


def test_api_key_is_required_beyond_loopback(served):
    _, root, images, model = served
    with pytest.raises(ValueError, match="requires an API key"):
        create_app(ServerConfig(index=str(root / "idx"), host="0.0.0.0"), model=model)
    app = create_app(ServerConfig(index=str(root / "idx"), host="0.0.0.0", api_key="s3cret"), model=model)
    with TestClient(app) as client:
        wait_ready(client)
        assert client.post("/search", json={"text": "a red circle"}).status_code == 401
        assert client.post("/search", json={"text": "x"}, headers={"X-API-Key": "wrong"}).status_code == 401
        ok = client.post("/search", json={"text": "a red circle"}, headers={"X-API-Key": "s3cret"})
        assert ok.status_code == 200
        assert client.post("/search", json={"text": "x"}, headers={"Authorization": "Bearer s3cret"}).status_code == 200
        url = ok.json()["hits"][0]["url"]
        assert client.get(url).status_code == 401 and client.get(url, params={"api_key": "s3cret"}).status_code == 200
        assert client.get("/health").status_code == 200  # liveness probes need no key
