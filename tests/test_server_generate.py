"""POST /caption and POST /chat through FastAPI's TestClient: captions equal the model's own, the
chat stream's pieces concatenate to `model.chat`'s answer, the generator loads from a checkpoint
beside the index (`--generator`), and every bad input is a 4xx with a one-line reason."""

import base64
import json
import threading
import time

import pytest
import torch
from search_helpers import make_index

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402
from PIL import Image  # noqa: E402
from test_server import wait_ready  # noqa: E402

import polymodal  # noqa: E402
from polymodal.models.generative import GenerationConfig  # noqa: E402
from polymodal.models.generative.captioner import create_captioner, save_captioner  # noqa: E402
from polymodal.models.generative.chat import chat_loss, collate, create_chat_model, save_chat_model  # noqa: E402
from polymodal.server.app import ServerConfig, create_app  # noqa: E402
from polymodal.server.schemas import CAPTION_MAX_TOKENS  # noqa: E402

TEXTS = ["a big red circle is to the left of a small blue square", "a green star", "what colour is the star ?",
         "how many circles are there ?", "green", "two", "describe the image ."]
MAX_IMAGES = 4


@pytest.fixture(scope="module")
def built(tmp_path_factory, shapes_dir):
    """An index, and a tiny untrained captioner and a tiny chat model saved beside it."""
    root = tmp_path_factory.mktemp("generate")
    model_dir, images, index = make_index(root, shapes_dir, n=8)
    torch.manual_seed(0)
    save_captioner(create_captioner("shapes-captioner-tiny", TEXTS * 4), root / "captioner")
    save_chat_model(briefly_trained_chat_model(), root / "chat")
    return root, index, polymodal.load(model_dir), sorted(images.glob("test-*.png"))


def briefly_trained_chat_model():
    """Untrained, the tiny chat model's greedy answer is often empty (a special token first): a few
    steps on one conversation make it answer with words, so a stream has pieces to compare."""
    model = create_chat_model("shapes-chat-tiny", TEXTS * 4)
    batch = collate(model, [[{"role": "user", "content": TEXTS[2]}, {"role": "assistant", "content": TEXTS[0]}]])
    images = torch.randint(0, 256, (1, 3, 64, 64), dtype=torch.uint8)
    optimizer = torch.optim.Adam(model.parameters(), 3e-3)
    for _ in range(20):
        optimizer.zero_grad()
        chat_loss(model.train()(images, *batch)).backward()
        optimizer.step()
    return model.eval()


def client_for(built, generator: str | None, **cfg):
    root, index, model, _ = built
    source = str(root / generator) if generator else None
    return TestClient(create_app(ServerConfig(index=str(index), generator=source, max_images=MAX_IMAGES,
                                              max_upload_bytes=200_000, **cfg), model=model))


@pytest.fixture(scope="module")
def chat_server(built):
    """A server whose generator (loaded by the server itself from the checkpoint) chats and captions."""
    with client_for(built, "chat") as client:
        assert wait_ready(client)["generator_loaded"]
        yield client, client.app.state.engine.generator


@pytest.fixture(scope="module")
def caption_server(built):
    with client_for(built, "captioner") as client:
        wait_ready(client)
        yield client, client.app.state.engine.generator


def upload(path, name=None):
    return ("file", (name or path.name, path.read_bytes(), "image/png"))


def b64(path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def sse_events(text: str) -> list[tuple[str, object]]:
    """(event type, JSON data) of each event in a text/event-stream body."""
    events = []
    for block in text.strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.split("\n"))
        events.append((fields.get("event", "message"), json.loads(fields["data"])))
    return events


def ask(question: str, *earlier: str) -> list[dict]:
    turns = [*earlier, question]
    return [{"role": "user" if k % 2 == 0 else "assistant", "content": t} for k, t in enumerate(turns)]


# -- /caption --------------------------------------------------------------------------------------------


def test_captions_equal_the_model_s_own(built, caption_server):
    client, captioner = caption_server
    files = built[3][:3]
    response = client.post("/caption", files=[upload(p) for p in files])
    assert response.status_code == 200, response.text
    expected = captioner.caption([Image.open(p) for p in files], GenerationConfig(max_new_tokens=CAPTION_MAX_TOKENS))
    assert response.json() == {"captions": [{"file": p.name, "caption": c} for p, c in zip(files, expected)]}
    assert all(expected)  # untrained, but words: the comparison is not of empty strings


def test_caption_settings_reach_the_decoder(built, caption_server):
    client, captioner = caption_server
    files = built[3][3:5]
    response = client.post("/caption", files=[upload(p) for p in files], data={"max_tokens": "3", "beam": "3"})
    expected = captioner.caption([Image.open(p) for p in files], GenerationConfig(max_new_tokens=3, num_beams=3))
    assert [c["caption"] for c in response.json()["captions"]] == expected
    short = client.post("/caption", files=[upload(files[0])], data={"max_tokens": "1"}).json()["captions"][0]
    assert len(short["caption"].split()) <= 1


def test_the_chat_model_captions_too(built, chat_server):
    client, model = chat_server
    path = built[3][0]
    caption = client.post("/caption", files=[upload(path)]).json()["captions"][0]["caption"]
    assert caption == model.caption([Image.open(path)], GenerationConfig(max_new_tokens=CAPTION_MAX_TOKENS))[0]


# -- /chat -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("messages", [ask("what colour is the star ?"),
                                      ask("how many circles are there ?", "what colour is the star ?", "green")])
def test_the_chat_stream_concatenates_to_the_answer(built, chat_server, messages):
    client, model = chat_server
    path = built[3][1]
    response = client.post("/chat", json={"image": b64(path), "messages": messages, "max_tokens": 12})
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
    events = sse_events(response.text)
    expected = model.chat(Image.open(path), messages, GenerationConfig(max_new_tokens=12))
    pieces = [data for kind, data in events if kind == "message"]
    assert expected and len(pieces) > 1 and "".join(pieces) == expected
    assert events[-1] == ("done", {"answer": expected}) and [k for k, _ in events[:-1]] == ["message"] * len(pieces)


def test_chat_without_streaming_is_one_json_answer(built, chat_server):
    client, model = chat_server
    path, messages = built[3][2], ask("how many circles are there ?")
    response = client.post("/chat", json={"image": b64(path), "messages": messages, "stream": False, "max_tokens": 20})
    expected = model.chat(Image.open(path), messages, GenerationConfig(max_new_tokens=20))
    assert response.status_code == 200 and response.json() == {"answer": expected}


def test_a_client_that_leaves_mid_answer_stops_the_decoding(built):
    """Under uvicorn (TestClient reads a stream whole): the generator is closed on the inference
    thread once the client has gone, well before the answer's end, and the server goes on."""
    httpx = pytest.importorskip("httpx")
    from test_web import PacedChat, serve_in_thread

    root, index, model, paths = built
    chat = polymodal.load(root / "chat")
    messages = ask("what colour is the star ?")
    pieces = list(chat.chat_stream(Image.open(paths[0]), messages))
    decoded, closed, closed_on = [], threading.Event(), []

    class Watched(PacedChat):
        def chat_stream(self, image, messages, config=None):
            try:
                for piece in super().chat_stream(image, messages, config):
                    decoded.append(piece)
                    yield piece
            finally:
                closed_on.append(threading.current_thread().name)
                closed.set()

    for url in serve_in_thread(create_app(ServerConfig(index=str(index)), model=model, generator=Watched(chat))):
        with httpx.stream("POST", url + "chat", json={"image": b64(paths[0]), "messages": messages}) as response:
            assert next(response.iter_lines()) == f"data: {json.dumps(pieces[0])}"
        assert closed.wait(10) and len(decoded) < len(pieces) > 3
        assert closed_on[0].startswith("polymodal-inference")  # where the generator runs, not mid-step elsewhere
        assert httpx.post(url + "search", json={"text": "a red circle", "k": 1}).status_code == 200


# -- bad input ---------------------------------------------------------------------------------------


def one_line_reason(response) -> str:
    """The reason a 4xx gives: its detail, or the messages of a validation error, on one line."""
    detail = response.json()["detail"]
    text = detail if isinstance(detail, str) else "; ".join(f"{e['loc'][-1]}: {e['msg']}" for e in detail)
    assert text and "\n" not in text, response.text
    return text


def test_bad_uploads_to_caption(built, caption_server):
    client, _ = caption_server
    path = built[3][0]
    cases = [
        ({"files": [("file", ("notes.txt", b"hello, not an image", "text/plain"))]}, 400, "not a readable image"),
        ({"files": [("file", ("empty.png", b"", "image/png"))]}, 400, "empty file"),
        ({"files": [("file", ("big.png", b"\x89PNG" + b"0" * 300_000, "image/png"))]}, 413, "upload limit"),
        ({"data": {"beam": "2"}}, 422, "file: Field required"),  # no image
        ({"files": [upload(path)] * (MAX_IMAGES + 1)}, 422, f"at most {MAX_IMAGES}"),  # too many images
        ({"files": [upload(path)], "data": {"beam": "0"}}, 422, "beam"),
        ({"files": [upload(path)], "data": {"max_tokens": ""}}, 422, "max_tokens: an integer, not an empty field"),
    ]
    for kwargs, status, reason in cases:
        response = client.post("/caption", **kwargs)
        assert response.status_code == status and reason in one_line_reason(response), (kwargs.keys(), response.text)


def test_bad_chats(built, chat_server):
    client, _ = chat_server
    image = b64(built[3][0])
    cases = [
        ({"messages": ask("what colour is the star ?")}, 422, "image: Field required"),
        ({"image": base64.b64encode(b"not an image").decode(), "messages": ask("what ?")}, 400, "not a readable image"),
        ({"image": "@@not base64@@", "messages": ask("what ?")}, 400, "not valid base64"),
        ({"image": image, "messages": ask("  ")}, 422, "empty text"),
        ({"image": image, "messages": []}, 422, "at least 1 item"),
        ({"image": image, "messages": "what colour ?"}, 422, "messages: Input should be a valid list"),
        ({"image": image, "messages": [{"role": "user"}]}, 422, "content: Field required"),
        ({"image": image, "messages": [{"role": "system", "content": "hi"}]}, 422, "'user' or 'assistant'"),
        ({"image": image, "messages": ask("a question", "an answer")[:2]}, 422, "must be the user's question"),
        ({"image": image, "messages": ask("a", "b", "c")[1:]}, 422, "turn 0 is the assistant's"),
        ({"image": image, "messages": [ask("a")[0]] * 2}, 422, "turn 1 is the user's"),
        ({"image": image, "messages": ask("how many circles are there ? " * 60)}, 413, "too long"),
    ]
    for body, status, reason in cases:
        response = client.post("/chat", json=body)
        assert response.status_code == status and reason in one_line_reason(response), (body, response.text)


def test_a_captioner_cannot_chat_and_no_generator_does_nothing(built, caption_server):
    client, _ = caption_server
    response = client.post("/chat", json={"image": b64(built[3][0]), "messages": ask("what colour ?")})
    assert response.status_code == 404 and "cannot chat" in one_line_reason(response)
    with client_for(built, None) as bare:
        assert not wait_ready(bare)["generator_loaded"]
        response = bare.post("/caption", files=[upload(built[3][0])])
        assert response.status_code == 404 and "--generator" in one_line_reason(response)
        assert bare.post("/search", json={"text": "a red circle", "k": 2}).status_code == 200


def test_a_generator_that_does_not_load_fails_health(built):
    with client_for(built, "model") as client:  # the index's aligned model: it neither captions nor chats
        deadline = time.monotonic() + 30
        while (health := client.get("/health")).json()["status"] == "loading" and time.monotonic() < deadline:
            time.sleep(0.02)
        assert health.status_code == 503 and "not a generative model" in health.json()["error"]
        assert client.post("/caption", files=[upload(built[3][0])]).status_code == 503
