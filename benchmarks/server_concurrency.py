"""The server under concurrent clients: 1 client against 8, on a 2,000-item index (loopback only).

    .venv/bin/python benchmarks/server_concurrency.py                    # 5 repeats of 8 s each
    .venv/bin/python benchmarks/server_concurrency.py --repeats 3 --duration 5 --server '{"workers": 2}'

It generates 2,000 ShapesWorld images, indexes them with a random-initialised `shapes-cnn-small`
(the default preset: a trained one costs the same to run), serves the index as `polymodal serve`
does (`polymodal.server.run.serve`, with any `ServerConfig` options from `--server`) in a process
of its own, and runs closed-loop clients in this one, each on one keep-alive connection posting
`/search` (`{"text": <a ShapesWorld caption>, "k": 10}`) and waiting for the answer before sending
the next. The clients are coroutines on one thread writing prepared requests (`--client asyncio`,
the default: 1-3% of the cores for all 8) or threads with http.client (`--client threads`, the
first version: 3-4%, and a GIL that its 8 threads share); 1 and 8 clients always use the same
kind. 1 client and 8 clients alternate within each repeat, so load from other jobs falls on both;
the figures quoted are medians over repeats. How busy the machine was is measured too: the share
of both cores that other processes took during each run, and the load average.
Writes `benchmarks/results/server_concurrency.json`.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "server_concurrency.json"


def build(work: Path, items: int) -> tuple[Path, list[str]]:
    """A ShapesWorld image folder, a model and its index (reused when present); the query captions."""
    from polymodal import create_model
    from polymodal.data.synthetic.shapes import ShapesConfig, generate
    from polymodal.index import BuildConfig, build_index
    from polymodal.models.checkpoint import save_checkpoint

    data, model_dir, index = work / "shapes", work / "model", work / "idx"
    if not (data / "manifest.jsonl").is_file():
        generate(data, ShapesConfig(n_train=0, n_val=0, n_test=items, n_unseen=0, seed=0), progress=False)
    captions = [t for line in (data / "manifest.jsonl").read_text().splitlines() for t in json.loads(line)["text"]]
    if not (model_dir / "model.safetensors").is_file():
        import torch

        torch.manual_seed(0)
        save_checkpoint(create_model("shapes-cnn-small", texts=captions), model_dir)
    if not (index / "manifest.json").is_file():
        build_index(BuildConfig(source=str(data / "images" / "test"), out=str(index), model=str(model_dir),
                                progress=False))
    return index, captions[:: max(1, len(captions) // 500)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(options: str, port: int) -> None:
    """The server process: what `polymodal serve` runs, with any ServerConfig options (JSON)."""
    from polymodal.server.app import ServerConfig, create_app

    try:
        from polymodal.server.run import serve as run_server
    except ImportError:  # a baseline from before `workers`: one process
        import uvicorn

        return uvicorn.run(create_app(ServerConfig(**json.loads(options))), host="127.0.0.1", port=port,
                           log_level="warning")
    run_server(ServerConfig(**json.loads(options)), port)


def start_server(index: Path, port: int, options: dict, src: Path | None = None) -> subprocess.Popen:
    cmd = [sys.executable, __file__, "--serve", json.dumps({"index": str(index), **options}), "--port", str(port)]
    env = {**os.environ, "PYTHONPATH": str(src)} if src else None  # another source tree: a baseline
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    deadline, healthy = time.time() + 120, 0
    while time.time() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the server exited: {server.stderr.read()}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/health")
            healthy = healthy + 1 if conn.getresponse().status == 200 else 0
            conn.close()
            if healthy >= 20:  # 20 connections in a row, so that every worker process is ready
                return server
            continue
        except OSError:
            healthy = 0
        time.sleep(0.2)
    server.kill()
    raise SystemExit("the server did not become ready in 120 s")


def client(port: int, queries: list[str], offset: int, stop_at: float, record_after: float, out: list) -> None:
    """One closed-loop client on a thread (http.client): post, wait, record the latency, repeat."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {"Content-Type": "application/json"}
    i = offset
    while True:
        body = json.dumps({"text": queries[i % len(queries)], "k": 10})
        start = time.perf_counter()
        if start >= stop_at:
            break
        conn.request("POST", "/search", body, headers)
        response = conn.getresponse()
        payload = response.read()
        end = time.perf_counter()
        if response.status != 200:
            raise RuntimeError(f"/search answered {response.status}: {payload[:200]!r}")
        if start >= record_after:
            out.append((end, end - start))
        i += 7
    conn.close()


def raw_requests(queries: list[str]) -> list[bytes]:
    """Each query as the bytes of a whole HTTP/1.1 keep-alive POST, made once before measuring."""
    out = []
    for q in queries:
        body = json.dumps({"text": q, "k": 10}).encode()
        out.append(b"POST /search HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                   b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    return out


async def raw_client(port: int, requests: list[bytes], offset: int, stop_at: float, record_after: float,
                     out: list) -> None:
    """One closed-loop client as a coroutine on one keep-alive connection: write the prepared
    request, read the status line, the headers and Content-Length bytes of body, repeat. All the
    clients share one thread, so together they cost the machine a fraction of http.client's CPU."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    i = offset
    while (start := time.perf_counter()) < stop_at:
        writer.write(requests[i % len(requests)])
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length:", 1)[1].split(b"\r\n", 1)[0])
        payload = await reader.readexactly(length)
        end = time.perf_counter()
        if not head.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(f"/search answered {head[:40]!r}: {payload[:200]!r}")
        if start >= record_after:
            out.append((end, end - start))
        i += 7
    writer.close()


def start_clients(kind: str, port: int, queries: list[str], clients: int, stop_at: float, record_after: float,
                  outs: list[list]) -> list[threading.Thread]:
    """The clients, started on threads (`threads`) or as coroutines on one thread (`asyncio`)."""
    if kind == "threads":
        threads = [threading.Thread(target=client, args=(port, queries, 97 * c, stop_at, record_after, outs[c]))
                   for c in range(clients)]
        for t in threads:
            t.start()
        return threads
    requests = raw_requests(queries)

    async def run_all():
        await asyncio.gather(*(raw_client(port, requests, 97 * c, stop_at, record_after, outs[c])
                               for c in range(clients)))

    thread = threading.Thread(target=asyncio.run, args=(run_all(),))
    thread.start()
    return [thread]


def cpu_ticks(pid: int | None = None) -> float:
    """Seconds of CPU: the whole machine busy (pid None) or one process and its worker processes
    (user + system)."""
    if pid is None:
        fields = [float(x) for x in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
        idle = fields[3] + fields[4]
        return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return (float(fields[11]) + float(fields[12])) / os.sysconf("SC_CLK_TCK") + sum(map(cpu_ticks, map(int, children)))


def measure(port: int, server_pid: int, queries: list[str], clients: int, duration: float,
            warmup: float = 1.0, kind: str = "asyncio") -> dict:
    start = time.perf_counter()
    record_after, stop_at = start + warmup, start + warmup + duration
    outs = [[] for _ in range(clients)]
    threads = start_clients(kind, port, queries, clients, stop_at, record_after, outs)
    time.sleep(warmup)
    busy0, server0, self0 = cpu_ticks(), cpu_ticks(server_pid), sum(os.times()[:2])
    for t in threads:
        t.join()
    wall = time.perf_counter() - record_after
    busy = cpu_ticks() - busy0
    ours = (cpu_ticks(server_pid) - server0) + (sum(os.times()[:2]) - self0)
    latencies = np.array([lat for out in outs for _, lat in out]) * 1e3
    cores = os.cpu_count() or 1
    return {"clients": clients, "requests": int(len(latencies)), "rps": len(latencies) / wall,
            "p50_ms": float(np.percentile(latencies, 50)), "p99_ms": float(np.percentile(latencies, 99)),
            "server_cpu_share": round((cpu_ticks(server_pid) - server0) / wall / cores, 3),
            "server_cpu_ms_per_request": round(1e3 * (cpu_ticks(server_pid) - server0) / max(1, len(latencies)), 2),
            "client_cpu_share": round((sum(os.times()[:2]) - self0) / wall / cores, 3),
            "others_cpu_share": round(max(0.0, busy - ours) / wall / cores, 3),
            "loadavg_1m": os.getloadavg()[0]}


def summary(runs: list[dict], clients: int) -> dict:
    mine = [r for r in runs if r["clients"] == clients]
    return {key: round(statistics.median(r[key] for r in mine), 2)
            for key in ("rps", "p50_ms", "p99_ms", "others_cpu_share", "server_cpu_share", "server_cpu_ms_per_request",
                        "client_cpu_share", "loadavg_1m")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "bench-server")
    parser.add_argument("--items", type=int, default=2000)
    parser.add_argument("--duration", type=float, default=8.0, help="seconds measured per run")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--server", default="{}", help='ServerConfig options as JSON, e.g. \'{"max_wait_ms": 2}\'')
    parser.add_argument("--client", choices=("asyncio", "threads"), default="asyncio",
                        help="asyncio: coroutines on one thread with prepared requests (cheap); threads: http.client")
    parser.add_argument("--server-src", type=Path, help="serve with the polymodal package under this src/ "
                        "(e.g. `git archive <commit> src | tar -x -C /tmp/old`: the code before, for a baseline)")
    parser.add_argument("--serve", help=argparse.SUPPRESS)  # internal: run the server process
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--label", default="polymodal serve", help="names the design in the JSON")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.serve:
        return serve(args.serve, args.port)

    index, queries = build(args.work, args.items)
    port = free_port()
    server = start_server(index, port, json.loads(args.server), args.server_src)
    runs = []
    try:
        for repeat in range(args.repeats):
            for n in (1, args.clients):
                r = measure(port, server.pid, queries, n, args.duration, kind=args.client)
                runs.append({"repeat": repeat, **r})
                print(f"repeat {repeat} clients {n}: {r['rps']:.0f} req/s, p50 {r['p50_ms']:.1f} ms, "
                      f"p99 {r['p99_ms']:.1f} ms, client {100 * r['client_cpu_share']:.0f}%, "
                      f"other jobs {100 * r['others_cpu_share']:.0f}% of the cores, load {r['loadavg_1m']:.1f}",
                      flush=True)
    finally:
        server.terminate()
        server.wait(10)
    report(args, runs)


def report(args, runs: list[dict]) -> None:
    one, many = summary(runs, 1), summary(runs, args.clients)
    ratios = [b["rps"] / a["rps"] for a, b in zip(runs[::2], runs[1::2])]
    result = {
        "design": args.label, "server_options": json.loads(args.server),
        "server_src": str(args.server_src) if args.server_src else None, "items": args.items, "repeats": args.repeats,
        "duration_s": args.duration, "cpus": os.cpu_count(), "client": args.client,
        "single_client_rps": one["rps"], f"clients{args.clients}_rps": many["rps"],
        "throughput_ratio": round(statistics.median(ratios), 2),
        "single_client": one, f"clients{args.clients}": many, "runs": runs,
    }
    print("\n| clients | req/s | p50 ms | p99 ms | other jobs' share of the cores |\n| --- | --- | --- | --- | --- |")
    for n, s in ((1, one), (args.clients, many)):
        print(f"| {n} | {s['rps']:.0f} | {s['p50_ms']:.1f} | {s['p99_ms']:.1f} | {100 * s['others_cpu_share']:.0f}% |")
    print(f"\nthroughput ratio ({args.clients} clients / 1, median of {args.repeats} repeats): "
          f"{result['throughput_ratio']:.2f}x (target >= 3x)")
    from polymodal.utils import write_json

    write_json(args.out, result)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
