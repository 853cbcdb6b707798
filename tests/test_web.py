"""The search page in headless Chromium (Playwright driving the system's /usr/bin/chromium): the
search, audio queries (a sound file, and the record button on Chromium's fake microphone) with
playable audio results, the chat panel (a streamed answer, a follow-up, a caption of a search
result, bad input shown as one error line), and the draw panel (a prompt -> the text-to-image
model's images)."""

import json
import shutil
import socket
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from search_helpers import make_collection, make_mixed_index, make_model

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = pytest.mark.slow  # a server and a real browser (make test-fast skips it)


def serve_in_thread(app):
    """Run `app` under uvicorn on a free port until the generator is closed; yields its base URL
    once /health says ready (the models and the index load in the background)."""
    uvicorn = pytest.importorskip("uvicorn")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    while not ready(port) and time.time() < deadline:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}/"
    server.should_exit = True
    thread.join(10)


def ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as response:
            return response.status == 200
    except OSError:  # urllib's HTTPError (503: still loading) is an OSError too
        return False


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory, shapes_dir):
    from polymodal.index import BuildConfig, build_index

    root = tmp_path_factory.mktemp("web")
    model_dir = make_model(root / "model")
    images = make_collection(root / "images", shapes_dir, n=12)
    build_index(BuildConfig(source=str(images), out=str(root / "idx"), model=str(model_dir), progress=False))
    return root / "idx"


@pytest.fixture(scope="module")
def server_url(index_dir):
    from polymodal.server.app import ServerConfig, create_app

    yield from serve_in_thread(create_app(ServerConfig(index=str(index_dir))))


@pytest.fixture(scope="module")
def chat_server(index_dir):
    """A server with a tiny chat model (it captions too) beside the index: (URL, the model)."""
    pytest.importorskip("torch").manual_seed(0)
    from test_server_generate import briefly_trained_chat_model

    from polymodal.server.app import ServerConfig, create_app

    model = briefly_trained_chat_model()
    for url in serve_in_thread(create_app(ServerConfig(index=str(index_dir)), generator=PacedChat(model))):
        yield url, model


class PacedChat:
    """The chat model with a pause before each streamed piece: a tiny model decodes so fast that
    its pieces could reach the page in one network read, and the page would show them at once."""

    def __init__(self, model):
        self.model, self.caption, self.chat = model, model.caption, model.chat

    def chat_stream(self, image, messages, config=None):
        for piece in self.model.chat_stream(image, messages, config):
            time.sleep(0.03)
            yield piece


def browser_page(*args: str):
    """A new page in headless Chromium started with `args`, until the generator is closed."""
    playwright = pytest.importorskip("playwright.sync_api")
    if not CHROMIUM.exists():  # `make install` installs it; only a machine without apt lacks it
        reason = "apt-get install chromium failed (not root?)" if shutil.which("apt-get") else "no apt-get here"
        pytest.skip(f"{CHROMIUM} is missing and `make install` could not install it: {reason}")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox", *args])
        yield browser.new_page()
        browser.close()


@pytest.fixture
def page():
    yield from browser_page()


def test_type_a_query_and_see_result_images(server_url, page):
    page.goto(server_url)
    page.fill("#k", "6")
    page.fill("#query", "a small red circle")
    page.press("#query", "Enter")
    page.wait_for_selector("#results figure >> nth=5")
    images = page.locator("#results img")
    assert images.count() == 6
    # Every thumbnail really loaded (the server served the file), and each shows a score.
    page.wait_for_function(
        "[...document.querySelectorAll('#results img')].every(i => i.complete && i.naturalWidth > 0)")
    captions = page.locator("#results figcaption").all_inner_texts()
    scores = [float(c.split()[0]) for c in captions]
    assert scores == sorted(scores, reverse=True)
    assert "6 results" in page.inner_text("#status")


def test_a_model_without_audio_shows_no_audio_controls(server_url, page):
    page.goto(server_url)
    page.wait_for_selector("#audio-form", state="hidden")  # /health: the model embeds images and text only


# -- audio queries: a sound file, the record button, playable results ----------------------------------


@pytest.fixture(scope="module")
def audio_index(tmp_path_factory, shapes_dir):
    """(index directory, {name: audio file in it}): four sounds and four images, an audio-capable model."""
    _, index, sounds = make_mixed_index(tmp_path_factory.mktemp("web-audio"), shapes_dir)
    return index, sounds


@pytest.fixture(scope="module")
def audio_server(audio_index):
    from polymodal.server.app import ServerConfig, create_app

    yield from serve_in_thread(create_app(ServerConfig(index=str(audio_index[0]))))


@pytest.fixture
def mic_page(audio_index):
    """A page whose microphone is Chromium's fake one, playing the spoken clip of the index in a
    loop, and whose permission prompt is answered yes."""
    yield from browser_page("--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                            f"--use-file-for-fake-audio-capture={audio_index[1]['speech']}",
                            "--autoplay-policy=no-user-gesture-required")


PLAYABLE = "a => a.readyState >= 1 && a.duration > 0"  # the browser read the file's header: it can play it


def test_upload_a_sound_and_play_the_results(audio_server, audio_index, page):
    _, sounds = audio_index
    page.goto(audio_server)
    page.fill("#k", "4")
    page.set_input_files("#audio", str(sounds["tone"]))
    page.wait_for_selector("#results figure >> nth=3")
    assert page.inner_text("#status") == "4 results for tone-440.wav"
    first = page.locator("#results figure").first
    assert first.get_attribute("class") == "sound" and first.inner_text().startswith("1.000 a pure tone at 440 Hz")
    players = page.locator("#results figure.sound audio")
    assert players.count() >= 1 and players.first.get_attribute("controls") is not None
    for i in range(players.count()):  # every audio result loads in the browser's own player
        players.nth(i).evaluate(f"a => new Promise(done => ({PLAYABLE})(a) ? done() : a.onloadedmetadata = done)")
    assert players.first.evaluate("a => a.duration") == pytest.approx(1.0, abs=0.01)
    players.first.evaluate("a => a.play()")
    page.wait_for_function("a => a.currentTime > 0", arg=players.first.element_handle())  # it really plays


def test_a_bad_sound_upload_is_one_error_line(audio_server, audio_index, page):
    page.goto(audio_server)
    notes = audio_index[1]["tone"].parent / "notes.wav"
    page.set_input_files("#audio", str(notes))
    page.wait_for_selector("#status.error")
    assert page.inner_text("#status").startswith("notes.wav: not a readable audio file")
    assert "\n" not in page.inner_text("#status") and page.locator("#results figure").count() == 0


# Keeps a copy of the audio file each audio search sends, for the test to decode.
KEEP_SENT_AUDIO = """() => {
  const realFetch = window.fetch;
  window.fetch = async (url, options) => {
    if (String(url).endsWith("search/audio")) {
      const file = options.body.get("file");
      window.sentAudio = {name: file.name, bytes: Array.from(new Uint8Array(await file.arrayBuffer()))};
    }
    return realFetch(url, options);
  };
}"""


def test_record_a_query_with_the_microphone(audio_server, mic_page):
    import io

    import soundfile as sf

    page = mic_page
    page.goto(audio_server)
    page.evaluate(KEEP_SENT_AUDIO)
    page.click("#record")
    page.wait_for_selector("#record.on")
    assert "recording" in page.inner_text("#status")
    time.sleep(1.5)
    page.click("#record")
    page.wait_for_function("document.querySelector('#status').textContent.includes('results for recording.wav')")
    assert page.locator("#results figure").count() > 0 and not page.locator("#record.on").count()
    sent = page.evaluate("window.sentAudio")
    wave, rate = sf.read(io.BytesIO(bytes(sent["bytes"])), dtype="float32")
    assert sent["name"] == "recording.wav" and rate == 16000 and wave.ndim == 1  # converted in the page
    assert 1.0 < len(wave) / rate < 3.0 and np.abs(wave).max() > 0.01  # it heard the fake microphone


# Records every text the newest answer shows, in order: the test sees whether it grew piece by piece.
RECORD_ANSWER = """() => {
  window.answerTexts = [];
  new MutationObserver(() => {
    const turns = document.querySelectorAll('#chat-log .turn.assistant');
    if (turns.length) window.answerTexts.push(turns[turns.length - 1].textContent);
  }).observe(document.querySelector('#chat-log'), {childList: true, subtree: true, characterData: true});
}"""
ANSWERED = ("n => document.querySelectorAll('#chat-log .turn.assistant').length === n && "
            "document.querySelector('#chat-status').textContent === ''")


def server_settings(route_default: str):
    """The generation settings the page's requests get: the route's defaults."""
    from polymodal.models.generative import GenerationConfig
    from polymodal.server import schemas

    if route_default == "chat":
        return GenerationConfig(max_new_tokens=schemas.ChatRequest.model_fields["max_tokens"].default)
    return GenerationConfig(max_new_tokens=schemas.CAPTION_MAX_TOKENS)


def ask(page, question: str) -> None:
    page.fill("#question", question)
    page.press("#question", "Enter")


def test_chat_panel_streams_the_answer_and_keeps_the_conversation(chat_server, index_dir, page):
    from PIL import Image

    url, model = chat_server
    picture = sorted((index_dir.parent / "images").glob("test-*.png"))[0]
    page.goto(url)
    page.set_input_files("#chat-file", str(picture))
    page.evaluate(RECORD_ANSWER)
    ask(page, "what colour is the star ?")
    page.wait_for_function(ANSWERED, arg=1)
    conversation = [{"role": "user", "content": "what colour is the star ?"}]
    first = model.chat(Image.open(picture), conversation, server_settings("chat"))
    assert page.inner_text("#chat-log .turn.assistant") == first
    shown = page.evaluate("window.answerTexts")
    assert len(set(shown)) > 2 and shown[-1] == first  # the answer grew piece by piece
    # The follow-up is sent with the conversation so far: the answer is the model's to all of it.
    ask(page, "how many circles are there ?")
    page.wait_for_function(ANSWERED, arg=2)
    conversation += [{"role": "assistant", "content": first},
                     {"role": "user", "content": "how many circles are there ?"}]
    answers = page.locator("#chat-log .turn.assistant").all_inner_texts()
    assert answers == [first, model.chat(Image.open(picture), conversation, server_settings("chat"))]
    assert page.locator("#chat-log .turn.user").all_inner_texts() == [conversation[0]["content"],
                                                                      conversation[2]["content"]]
    page.click("#chat-reset")
    assert page.locator("#chat-log .turn").count() == 0


def top_hit(url: str, text: str) -> dict:
    request = urllib.request.Request(url + "search", data=json.dumps({"text": text, "k": 1}).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)["hits"][0]


def test_chat_panel_captions_a_search_result(chat_server, page):
    from PIL import Image

    url, model = chat_server
    page.goto(url)
    ask_search = "a small red circle"
    page.fill("#query", ask_search)
    page.press("#query", "Enter")
    page.wait_for_selector("#results figure")
    page.locator("#results figure button").first.click()  # "ask" under the best result
    page.wait_for_function("document.querySelector('#chat-image').naturalWidth > 0")
    page.click("#caption-button")
    page.wait_for_selector("#chat-log .turn.caption")
    expected = model.caption([Image.open(top_hit(url, ask_search)["path"])], server_settings("caption"))[0]
    assert expected and page.inner_text("#chat-log .turn.caption") == expected


def test_chat_panel_shows_bad_input_as_one_error_line(chat_server, index_dir, tmp_path, page):
    url, _ = chat_server
    page.goto(url)
    ask(page, "what colour is the star ?")  # no image yet
    page.wait_for_selector("#chat-status.error")
    assert page.inner_text("#chat-status").startswith("no image")
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_bytes(b"hello, not an image")
    for picture, question, reason in [(not_an_image, "what colour is the star ?", "not a readable image"),
                                      (sorted((index_dir.parent / "images").glob("*.png"))[0], "   ", "empty text")]:
        page.set_input_files("#chat-file", str(picture))
        ask(page, question)
        page.wait_for_function(f"document.querySelector('#chat-status').textContent.includes('{reason}')")
        assert page.get_attribute("#chat-status", "class") == "error" and "\n" not in page.inner_text("#chat-status")
    assert page.locator("#chat-log .turn").count() == 0  # a refused question is not kept


@pytest.fixture(scope="module")
def draw_server(index_dir):
    """A server with a tiny (untrained) text-to-image pipeline beside the index: (URL, the model)."""
    pytest.importorskip("diffusers")
    pytest.importorskip("torch").manual_seed(0)
    from polymodal.models.generative.diffusion import create_text_to_image
    from polymodal.server.app import ServerConfig, create_app

    model = create_text_to_image("shapes-diffusion-tiny")
    for url in serve_in_thread(create_app(ServerConfig(index=str(index_dir)), generator=model)):
        yield url, model


def test_draw_panel_shows_the_models_images_and_bad_input_as_one_line(draw_server, page):
    import base64

    url, model = draw_server
    page.goto(url)
    page.fill("#prompt", "a red circle left of a blue square")
    page.fill("#draw-n", "2")
    page.fill("#draw-steps", "3")
    page.fill("#draw-seed", "7")
    page.click("#draw-form button")
    page.wait_for_function("document.querySelectorAll('#drawn img').length === 2")
    shown = [page.get_attribute(f"#drawn img:nth-child({i})", "src") for i in (1, 2)]
    expected = model.generate("a red circle left of a blue square", n=2, steps=3, seed=7, guidance=3.0)
    for src, image in zip(shown, expected):
        from io import BytesIO

        from PIL import Image

        drawn = Image.open(BytesIO(base64.b64decode(src.split(",", 1)[1])))
        # The server's thread count is not this test's: float sums differ in order, pixels by a level or two.
        assert np.abs(np.asarray(drawn, dtype=int) - np.asarray(image, dtype=int)).max() <= 2
    page.fill("#prompt", "   ")
    page.click("#draw-form button")
    page.wait_for_selector("#draw-status.error")
    assert "empty text" in page.inner_text("#draw-status") and "\n" not in page.inner_text("#draw-status")
