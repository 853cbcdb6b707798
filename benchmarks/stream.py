"""Streaming training data from WebDataset shards, beside the in-memory path, in one run:

- memory: peak RSS (the trainer and its DataLoader workers together) training the same steps from
  N-image shards and from SCALE x N-image shards; flat means the ratio stays <= 1.10;
- throughput: samples/s streaming from the N-image shards against the in-memory path on the same
  model, data and steps (runs interleaved, the ratio's median reported);
- resume: an uninterrupted streaming run against one killed (SIGKILL) at a random step and
  restarted with --resume; the per-step sample ids must be identical.

    .venv/bin/python benchmarks/stream.py                      # N=5,000 vs 50,000 images (~10 min here)
    .venv/bin/python benchmarks/stream.py --n 100000 --scale 10   # the issue's 100k vs 1M
    .venv/bin/python benchmarks/stream.py --quick              # a one-minute check

Every training run is `polymodal train` in a child process with one torch thread
(OMP_NUM_THREADS=1); the ShapesWorld datasets and their shards are cached under --work. The
N x SCALE set is SCALE x N distinct generated images. Figures: benchmarks/results/scale_stream.json
(--quick writes WORK/scale_stream.json instead).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import psutil
from rich.console import Console
from rich.table import Table

from polymodal.data import load_records
from polymodal.data.formats.webdataset import INDEX, write_shards
from polymodal.data.synthetic.shapes import ShapesConfig, generate
from polymodal.utils import write_json

RESULTS = Path(__file__).parent / "results" / "scale_stream.json"
console = Console()


def dataset(work: Path, n: int, shard_size: int) -> tuple[Path, Path]:
    """(dataset directory, shard directory) of an n-image ShapesWorld, made once and cached."""
    data, shards = work / f"shapes-{n}", work / f"shards-{n}"
    if not (data / "manifest.jsonl").is_file():
        generate(data, ShapesConfig(n_train=n, n_val=0, n_test=0, n_unseen=0, seed=n), workers=1)
    if not (shards / INDEX).is_file():
        write_shards(load_records(data), shards, shard_size)
    return data, shards


def train_run(data: Path, out: Path, args, extra: list[str] = (), kill_at: int | None = None) -> dict:
    """Run `polymodal train` as a child; returns peak RSS (process tree, GiB), exit code and the
    throughput read from its sample log (steps after the first, by their timestamps)."""
    log = out.with_suffix(".jsonl")
    cmd = [sys.executable, "-m", "polymodal.cli", "train", str(data), "--out", str(out), "--model", args.model,
           "--steps", str(args.steps), "--batch-size", str(args.batch_size), "--eval-images", "0",
           "--workers", str(args.workers), "--sample-log", str(log), *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    errors = out.with_suffix(".stderr")
    with errors.open("wb") as err_file:
        proc = psutil.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=err_file)
        peak = 0
        while proc.poll() is None:
            peak = max(peak, _tree_rss(proc))
            if kill_at is not None and log.is_file() and _lines(log) >= kill_at:
                _kill_tree(proc)
            time.sleep(0.05)
    err = errors.read_text(errors="replace")
    if proc.returncode not in (0, -signal.SIGKILL):
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{err[-2000:]}")
    return {"peak_rss_gib": peak / 2**30, "rc": proc.returncode, "samples_per_s": _throughput(log, args.batch_size)}


def _kill_tree(proc: psutil.Process) -> None:
    """SIGKILL the trainer and its DataLoader workers at once (a worker whose parent is killed
    can outlive it), as a crashed machine would."""
    for p in [*proc.children(recursive=True), proc]:
        try:
            p.kill()
        except psutil.Error:
            pass


def _tree_rss(proc: psutil.Process) -> int:
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


def _lines(path: Path) -> int:
    with path.open() as f:
        return sum(1 for _ in f)


def _rows(path: Path) -> dict[int, dict]:
    return {row["step"]: row for row in map(json.loads, path.read_text().splitlines())}


def _throughput(log: Path, batch_size: int) -> float | None:
    rows = sorted(_rows(log).values(), key=lambda r: r["step"]) if log.is_file() else []
    if len(rows) < 3:
        return None
    first, last = rows[1], rows[-1]  # from the end of the first step: start-up is not throughput
    return (last["step"] - first["step"]) * batch_size / (last["t"] - first["t"])


def fresh(path: Path) -> Path:
    import shutil

    shutil.rmtree(path, ignore_errors=True)
    path.with_suffix(".jsonl").unlink(missing_ok=True)
    return path


def memory(args, work: Path, small: Path, big: Path) -> dict:
    runs = {name: train_run(shards, fresh(work / f"mem-{name}"), args)
            for name, shards in (("small", small), ("big", big))}
    return {"small": runs["small"]["peak_rss_gib"], "big": runs["big"]["peak_rss_gib"],
            "ratio": runs["big"]["peak_rss_gib"] / runs["small"]["peak_rss_gib"]}


def throughput(args, work: Path, data: Path, shards: Path) -> dict:
    """In-memory and streaming runs, interleaved so that load from other jobs falls on both."""
    memory_rates, stream_rates, peaks = [], [], {}
    for rep in range(args.repeats):
        m = train_run(data, fresh(work / f"tp-memory-{rep}"), args)
        s = train_run(shards, fresh(work / f"tp-stream-{rep}"), args)
        memory_rates.append(m["samples_per_s"])
        stream_rates.append(s["samples_per_s"])
        peaks = {"memory": m["peak_rss_gib"], "stream": s["peak_rss_gib"]}
    ratios = [s / m for s, m in zip(stream_rates, memory_rates, strict=True)]
    return {"memory": statistics.median(memory_rates), "stream": statistics.median(stream_rates),
            "ratio": statistics.median(ratios), "ratios": ratios, "peak_rss_gib": peaks}


def resume_check(args, work: Path, shards: Path) -> dict:
    """Uninterrupted vs killed at a random step and resumed; per-step sample ids compared."""
    save = ["--save-every", str(args.save_every)]
    train_run(shards, fresh(work / "resume-whole"), args, save)
    kill_at = random.Random(args.seed).randrange(args.save_every + 2, args.steps - 1)
    cut = fresh(work / "resume-cut")
    killed = train_run(shards, cut, args, save, kill_at=kill_at)
    train_run(shards, cut, args, [*save, "--resume"])
    a, b = _rows((work / "resume-whole").with_suffix(".jsonl")), _rows(cut.with_suffix(".jsonl"))
    same = len(a) == args.steps and {k: r["ids"] for k, r in a.items()} == {k: r["ids"] for k, r in b.items()}
    return {"identical": same, "killed_at_step": kill_at, "killed": killed["rc"] == -signal.SIGKILL, "steps": len(a)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=5000, help="images in the smaller shard set")
    parser.add_argument("--scale", type=int, default=10, help="the larger set holds scale x n images")
    parser.add_argument("--steps", type=int, default=150, help="optimizer steps in every run")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--model", default="shapes-cnn-tiny")
    parser.add_argument("--workers", type=int, default=1, help="DataLoader workers decoding shards")
    parser.add_argument("--shard-size", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=2, help="interleaved throughput runs per path")
    parser.add_argument("--save-every", type=int, default=20, help="mid-epoch checkpoints in the resume check")
    parser.add_argument("--seed", type=int, default=0, help="picks the step the resume check kills at")
    parser.add_argument("--work", type=Path, default=Path("runs/bench-stream"))
    parser.add_argument("--quick", action="store_true", help="n=600, scale 4, 40 steps, one repeat")
    args = parser.parse_args()
    if args.quick:
        args.n, args.scale, args.steps, args.repeats, args.shard_size, args.save_every = 600, 4, 40, 1, 100, 10
    args.work.mkdir(parents=True, exist_ok=True)
    data, small = dataset(args.work, args.n, args.shard_size)
    _, big = dataset(args.work, args.n * args.scale, args.shard_size)
    mem = memory(args, args.work, small, big)
    tp = throughput(args, args.work, data, small)
    res = resume_check(args, args.work, small)
    report(args, mem, tp, res)


def report(args, mem: dict, tp: dict, res: dict) -> None:
    table = Table(title=f"streaming: {args.model}, {args.steps} steps of {args.batch_size}, {args.workers} workers")
    for col in ("measure", "baseline", "polymodal streaming", "ratio", "target"):
        table.add_column(col)
    table.add_row(f"peak RSS, GiB ({args.n:,} vs {args.n * args.scale:,} images)", f"{mem['small']:.2f}",
                  f"{mem['big']:.2f}", f"{mem['ratio']:.3f}", "<= 1.10")
    table.add_row("samples/s (in-memory vs streaming, same data)", f"{tp['memory']:.0f}", f"{tp['stream']:.0f}",
                  f"{tp['ratio']:.3f}", ">= 0.95")
    table.add_row(f"kill at step {res['killed_at_step']} + --resume", "", "identical" if res["identical"] else
                  "DIFFERENT", "", "identical")
    console.print(table)
    write_json(args.work / "scale_stream.json" if args.quick else RESULTS, {
        "stream_memory_ratio": round(mem["ratio"], 4), "stream_throughput_ratio": round(tp["ratio"], 4),
        "resume_identical": res["identical"], "stream_peak_rss_gib": {k: round(mem[k], 3) for k in ("small", "big")},
        "stream_images": {"small": args.n, "big": args.n * args.scale},
        "throughput_samples_per_s": {"in_memory": round(tp["memory"], 1), "stream": round(tp["stream"], 1)},
        "throughput_ratios": [round(r, 4) for r in tp["ratios"]], "throughput_peak_rss_gib": tp["peak_rss_gib"],
        "resume_killed_at_step": res["killed_at_step"], "model": args.model, "steps": args.steps,
        "batch_size": args.batch_size, "workers": args.workers, "quick": args.quick,
    })
    console.print(f"wrote {args.work / 'scale_stream.json' if args.quick else RESULTS}")


if __name__ == "__main__":
    main()
