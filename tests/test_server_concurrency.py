"""The server under concurrent clients: the micro-batcher on its own, every concurrent response
checked against a direct encode + search, readiness while loading, and the index reloaded from
disk while the server keeps answering."""

import asyncio
import dataclasses
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
import threadpoolctl
import torch
from search_helpers import make_collection, make_index
from typer.testing import CliRunner

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

import polymodal  # noqa: E402
from polymodal.cli import app as cli_app  # noqa: E402
from polymodal.index import BuildConfig, build_index  # noqa: E402
from polymodal.server import (
    engine as engine_module,  # noqa: E402
    fastpath,  # noqa: E402
)
from polymodal.server.app import ServerConfig, create_app, lifespan  # noqa: E402
from polymodal.server.batcher import MicroBatcher  # noqa: E402
from polymodal.server.deps import search_answer  # noqa: E402
from polymodal.server.responses import FastJSONResponse  # noqa: E402
from polymodal.server.run import CONFIG_ENV, app_from_env  # noqa: E402

COLOURS = ["red", "green", "blue", "yellow", "purple", "orange", "grey", "white"]
SHAPES = ["circle", "square", "triangle", "star", "disc", "box"]
QUERIES = [f"a {size} {c} {s}" for size in ("small", "big") for c in COLOURS for s in SHAPES][:48]


# -- the micro-batcher alone ----------------------------------------------------------------------

def run_batches(jobs: list, max_batch: int = 8, max_wait_s: float = 0.0, fail_on=None):
    """Submit every job at once; each run_batch call squares its jobs after a short pause."""
    seen = []

    def square_all(batch):
        seen.append(list(batch))
        time.sleep(0.005)  # a forward pass: jobs arriving meanwhile gather into the next batch
        if fail_on in batch:
            raise ValueError(f"bad job {fail_on}")
        return [x * x for x in batch]

    async def main():
        with ThreadPoolExecutor(1) as pool:
            batcher = MicroBatcher(square_all, pool, max_batch=max_batch, max_wait_s=max_wait_s)
            results = await asyncio.gather(*(batcher.submit(j) for j in jobs), return_exceptions=True)
            await batcher.close()
            return results

    return asyncio.run(main()), seen


def test_batcher_answers_each_job_with_its_own_result():
    results, batches = run_batches(list(range(40)))
    assert results == [j * j for j in range(40)]
    assert max(len(b) for b in batches) == 8 and len(batches) <= 6  # batched, never past max_batch
    assert sorted(j for b in batches for j in b) == list(range(40))  # each job ran exactly once


def test_one_bad_job_fails_alone():
    results, _ = run_batches(list(range(10)), fail_on=3)
    assert isinstance(results[3], ValueError) and "bad job 3" in str(results[3])
    assert [r for i, r in enumerate(results) if i != 3] == [j * j for j in range(10) if j != 3]


def test_max_wait_gathers_jobs_that_arrive_later_only_under_load():
    async def main():
        with ThreadPoolExecutor(1) as pool:
            batcher = MicroBatcher(lambda batch: [len(batch)] * len(batch), pool, max_batch=16, max_wait_s=0.2)

            async def later(j):
                await asyncio.sleep(0.01 * j)
                return await batcher.submit(j)

            alone = await asyncio.gather(*(later(j) for j in range(3)))  # one at a time: nobody waits
            burst = await asyncio.gather(*(batcher.submit(j) for j in range(6)))
            spaced = await asyncio.gather(*(later(j) for j in range(3)))  # after a burst: gathered
            await batcher.close()
            return alone, burst, spaced

    alone, burst, spaced = asyncio.run(main())
    assert alone == [1, 1, 1] and burst == [6] * 6 and spaced == [3, 3, 3]


# -- the server ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def collection(tmp_path_factory, shapes_dir):
    root = tmp_path_factory.mktemp("concurrent")
    model_dir, _, _ = make_index(root, shapes_dir, n=30)
    return root, polymodal.load(model_dir)


async def wait_ready(app, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not app.state.engine.ready:
        assert app.state.engine.error is None and time.monotonic() < deadline, app.state.engine.error
        await asyncio.sleep(0.01)


def test_concurrent_queries_each_get_their_own_answer(collection):
    root, model = collection
    app = create_app(ServerConfig(index=str(root / "idx"), max_wait_ms=5), model=model)

    async def main():
        async with lifespan(app):
            await wait_ready(app)
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://server") as client:
                searches = [client.post("/search", json={"text": q, "k": 3 + i % 5}) for i, q in enumerate(QUERIES)]
                embeds = [client.post("/embed/text", json={"texts": QUERIES[i:i + 3]}) for i in range(0, 12, 3)]
                return await asyncio.gather(*searches, *embeds)

    responses = asyncio.run(main())
    assert all(r.status_code == 200 for r in responses)
    assert max(app.state.engine.batchers["text"].batch_sizes) > 1  # they really shared forward passes
    with polymodal.Index.open(root / "idx") as index:
        for i, (query, response) in enumerate(zip(QUERIES, responses)):
            expected = index.search_vectors(model.encode_text([query]).numpy(), 3 + i % 5)[0]
            hits = response.json()["hits"]
            assert response.json()["query"] == query and [h["id"] for h in hits] == [h.id for h in expected]
            np.testing.assert_allclose([h["score"] for h in hits], [h.score for h in expected], atol=1e-5)
    for i, response in zip(range(0, 12, 3), responses[len(QUERIES):]):
        np.testing.assert_allclose(response.json()["embeddings"], model.encode_text(QUERIES[i:i + 3]).numpy(),
                                   atol=1e-5)


def test_not_ready_until_the_model_and_index_are_loaded(collection, monkeypatch):
    root, model = collection
    release = threading.Event()

    def slow_load(spec, device="cpu"):
        release.wait(30)
        return model

    monkeypatch.setattr(engine_module, "load_model", slow_load)
    with TestClient(create_app(ServerConfig(index=str(root / "idx")))) as client:
        health = client.get("/health")
        assert health.status_code == 503 and health.json()["status"] == "loading"
        assert not health.json()["model_loaded"] and not health.json()["index_loaded"]
        busy = client.post("/search", json={"text": "a red circle"})
        assert busy.status_code == 503 and "loading" in busy.json()["detail"]
        release.set()
        deadline = time.monotonic() + 30
        while (health := client.get("/health")).status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert health.json()["ready"] and health.json()["model_loaded"] and health.json()["items"] == 30
        assert client.post("/search", json={"text": "a red circle"}).status_code == 200


def test_a_failed_load_is_reported(collection, monkeypatch):
    root, _ = collection

    def broken_load(spec, device="cpu"):
        raise ValueError(f"{spec}: no such model")

    monkeypatch.setattr(engine_module, "load_model", broken_load)
    with TestClient(create_app(ServerConfig(index=str(root / "idx")))) as client:
        deadline = time.monotonic() + 30
        while (health := client.get("/health").json())["status"] == "loading" and time.monotonic() < deadline:
            time.sleep(0.01)
        assert health["status"] == "failed" and "no such model" in health["error"]
        assert "no such model" in client.post("/search", json={"text": "x"}).json()["detail"]


def test_index_reloads_while_serving(tmp_path, collection, shapes_dir):
    root, model = collection
    index_dir = tmp_path / "idx"
    first = make_collection(tmp_path / "first", shapes_dir, n=10)
    build_index(BuildConfig(source=str(first), out=str(index_dir), model=str(root / "model"), progress=False))
    more = tmp_path / "more"
    more.mkdir()
    newcomer = sorted((shapes_dir / "images" / "val").iterdir())[0]
    (more / "newcomer.png").write_bytes(newcomer.read_bytes())
    app = create_app(ServerConfig(index=str(index_dir), reload_interval_s=0.05), model=model)
    with TestClient(app) as client:
        deadline = time.monotonic() + 30
        while client.get("/health").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.01)
        before = client.get("/health").json()
        answers = []
        stop = threading.Event()

        def keep_querying():  # queries in flight across the swap must all be answered
            while not stop.is_set():
                answers.append(client.post("/search", json={"text": "a red circle", "k": 50}).status_code)

        querier = threading.Thread(target=keep_querying)
        querier.start()
        build_index(BuildConfig(source=str(more), out=str(index_dir), progress=False))  # `index add`
        while (after := client.get("/health").json())["items"] == before["items"] and time.monotonic() < deadline:
            time.sleep(0.02)
        stop.set()
        querier.join()
        assert after["items"] == before["items"] + 1 and after["index_generation"] > before["index_generation"]
        assert answers and set(answers) == {200}
        found = client.post("/search/image", files={"file": ("q.png", newcomer.read_bytes())}, data={"k": "1"})
        assert found.json()["hits"][0]["path"] == str(more / "newcomer.png")
        time.sleep(0.3)  # nothing changed on disk since: no further reloads
        assert client.get("/health").json()["index_generation"] == after["index_generation"]


# -- the knobs: inference threads, worker processes, `polymodal serve` -----------------------------

def blas_threads() -> int:
    return max(info["num_threads"] for info in threadpoolctl.threadpool_info() if info["user_api"] == "blas")


def test_inference_threads_limit_torch_and_blas_while_serving_and_are_restored(collection):
    root, model = collection
    torch.set_num_threads(2)
    with threadpoolctl.threadpool_limits(2, user_api="blas"):
        app = create_app(ServerConfig(index=str(root / "idx"), threads=1), model=model)

        async def main():
            async with lifespan(app):
                await wait_ready(app)
                return await app.state.engine.call(torch.get_num_threads), blas_threads()

        assert asyncio.run(main()) == (1, 1)  # torch's on the inference thread, BLAS's for the process
        assert (torch.get_num_threads(), blas_threads()) == (2, 2)


def test_each_worker_process_makes_its_app_from_the_config_in_its_environment(collection, monkeypatch):
    root, _ = collection
    cfg = ServerConfig(index=str(root / "idx"), workers=2, max_batch=8, max_wait_ms=0.5)
    monkeypatch.setenv(CONFIG_ENV, json.dumps(dataclasses.asdict(cfg)))
    assert app_from_env().state.engine.cfg == cfg
    with pytest.raises(ValueError, match="workers"):
        ServerConfig(index=str(root / "idx"), workers=0)


def test_serve_passes_its_knobs_to_the_server(collection, monkeypatch):
    root, _ = collection
    served = []
    monkeypatch.setattr("polymodal.server.run.serve", lambda cfg, port: served.append((cfg, port)))
    result = CliRunner().invoke(cli_app, ["serve", str(root / "idx"), "--port", "8123", "--workers", "2",
                                          "--threads", "0", "--max-batch", "16", "--max-wait-ms", "0.5"])
    assert result.exit_code == 0, result.output
    cfg, port = served[0]
    assert (port, cfg.workers, cfg.threads, cfg.max_batch, cfg.max_wait_ms) == (8123, 2, None, 16, 0.5)


def test_fast_json_escapes_what_utf8_cannot_carry():
    hits = {"query": "a red circle", "hits": [{"id": 1, "score": 0.5, "path": "caf\u00e9.png", "caption": None}]}
    assert json.loads(FastJSONResponse(hits).body) == hits
    odd = {"query": "x", "hits": [{"id": 2, "score": 0.25, "path": "bad-\udcff.png", "caption": None}]}
    assert FastJSONResponse(odd).body.decode("ascii") == json.dumps(odd, separators=(",", ":"))


# -- the fast /search path --------------------------------------------------------------------------

def test_the_fast_search_path_answers_exactly_as_the_route_does(collection, monkeypatch):
    root, model = collection
    answered = []
    monkeypatch.setattr(fastpath, "search_answer", lambda *args: answered.append(args) or search_answer(*args))
    fast, routed = {"Content-Type": "application/json"}, {"Content-Type": "application/json; charset=utf-8"}
    with TestClient(create_app(ServerConfig(index=str(root / "idx")), model=model)) as client:
        asyncio.run(wait_ready(client.app))
        bodies = [b'{"text": "a small red circle", "k": 4}', b'{"text": "   ", "k": 4}', b'{"text": "a", "k": 0}',
                  b'{"text": "a", "k": NaN}', b'{"text": "a", "k": 3, "extra": 1}', b'{"text": "a"', b"[]"]
        for body in bodies:
            a = client.post("/search", content=body, headers=fast)
            b = client.post("/search", content=body, headers=routed)
            assert (a.status_code, a.headers["content-type"], a.content) == (b.status_code, b.headers["content-type"],
                                                                            b.content), body
        # the two valid bodies went the fast way (an unknown key is ignored, as the route ignores it);
        # the rest got the route's own errors
        assert [args[1] for args in answered] == ["a small red circle", "a"]
    with TestClient(create_app(ServerConfig(index=str(root / "idx"), api_key="k"), model=model)) as client:
        asyncio.run(wait_ready(client.app))
        assert client.post("/search", content=bodies[0], headers=fast).status_code == 401
    assert len(answered) == 2  # a key-protected app: always the route (it checks the key)
