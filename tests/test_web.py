"""The search page in headless Chromium (Playwright driving the system's /usr/bin/chromium)."""

import shutil
import socket
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from search_helpers import make_collection, make_model

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = pytest.mark.slow  # a server and a real browser (make test-fast skips it)


@pytest.fixture(scope="module")
def server_url(tmp_path_factory, shapes_dir):
    uvicorn = pytest.importorskip("uvicorn")
    from polymodal.index import BuildConfig, build_index
    from polymodal.server.app import ServerConfig, create_app

    root = tmp_path_factory.mktemp("web")
    model_dir = make_model(root / "model")
    images = make_collection(root / "images", shapes_dir, n=12)
    build_index(BuildConfig(source=str(images), out=str(root / "idx"), model=str(model_dir), progress=False))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(ServerConfig(index=str(root / "idx"))), host="127.0.0.1",
                                           port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    while not ready(port) and time.time() < deadline:  # the model and index load in the background
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


def test_type_a_query_and_see_result_images(server_url):
    playwright = pytest.importorskip("playwright.sync_api")
    if not CHROMIUM.exists():  # `make install` installs it; only a machine without apt lacks it
        reason = "apt-get install chromium failed (not root?)" if shutil.which("apt-get") else "no apt-get here"
        pytest.skip(f"{CHROMIUM} is missing and `make install` could not install it: {reason}")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"])
        page = browser.new_page()
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
        browser.close()
