"""Decoding speed of polymodal's text decoder (issue 12's targets).

    python benchmarks/decoding_speed.py [--repeats 7] [--new-tokens 64] [--threads 1]

A random-initialised captioning decoder of a realistic small size (width 256, 4 layers, 4 heads,
vocab 1000, cross-attending to 16 image tokens of width 256), greedy decoding with no stop
sequence, so every call makes exactly `--new-tokens` tokens:
  KV cache         one prompt of 8 tokens, and a batch of 8 such prompts: cached decoding against
                   uncached (the whole sequence again each step); target >= 5x the tokens/s
  batched          32 prompts of 4-16 tokens in one left-padded batch against 32 single calls,
                   both cached; target >= 4x the tokens/s
Each measurement is the median of `--repeats`, the paths interleaved within each repeat (the
machine is shared and noisy), after one warm-up of each. Both comparisons also check that the
two paths produce the same tokens. Writes benchmarks/results/decoding_speed.json.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from polymodal.models.generative import DecoderConfig, GenerationConfig, TextDecoder, generate
from polymodal.utils import write_json

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "decoding_speed.json"
console = Console(width=120)


def timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def cpu_flags() -> str:
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown"
    found = [f for f in ("avx512f", "avx512_bf16", "amx_bf16", "avx2", "fma") if f" {f}" in flags]
    return " ".join(found) or "no AVX"


def measure(paths: dict, repeats: int) -> dict[str, list[float]]:
    """Seconds per call of each path, interleaved, after one warm-up each."""
    for fn in paths.values():
        fn()
    seconds = {name: [] for name in paths}
    for _ in range(repeats):
        for name, fn in paths.items():
            seconds[name].append(timed(fn)[0])
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--kv-batch", type=int, default=8, help="prompts in the batched KV-cache comparison")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = DecoderConfig(vocab_size=1000, width=256, layers=4, heads=4, max_positions=256, image_width=256)
    decoder = TextDecoder(cfg).eval()
    gen = torch.Generator().manual_seed(1)
    images = torch.randn(args.batch, 16, 256, generator=gen)  # (B, T_img, D_img)
    prompts = [torch.randint(0, 1000, (int(n),), generator=gen).tolist()
               for n in torch.randint(4, 17, (args.batch,), generator=gen)]
    cached = GenerationConfig(max_new_tokens=args.new_tokens)
    uncached = GenerationConfig(max_new_tokens=args.new_tokens, use_cache=False)
    eight = [p[:8] + [1] * (8 - len(p[:8])) for p in prompts[:args.kv_batch]]  # 8-token prompts

    def run(rows: int, config: GenerationConfig, batch_prompts):
        return lambda: generate(decoder.bind(images[:rows]), batch_prompts, config).tokens

    def singles():
        return [generate(decoder.bind(images[i:i + 1]), [p], cached).tokens[0] for i, p in enumerate(prompts)]

    n, kb, b = args.new_tokens, args.kv_batch, args.batch
    comparisons = [  # (key, fast path, slow path, tokens per call, target)
        ("kv_cache_speedup", ("cached, 1 prompt", run(1, cached, eight[:1])),
         ("uncached, 1 prompt", run(1, uncached, eight[:1])), n, 5.0),
        (f"kv_cache_speedup_batch{kb}", (f"cached, {kb} prompts", run(kb, cached, eight)),
         (f"uncached, {kb} prompts", run(kb, uncached, eight)), kb * n, 5.0),
        ("batch_speedup", (f"batched, {b} prompts", run(b, cached, prompts)),
         (f"{b} single calls", singles), b * n, 4.0),
    ]
    same = {key: fast[1]() == slow[1]() for key, fast, slow, _, _ in comparisons}
    seconds = measure(dict(path for c in comparisons for path in c[1:3]), args.repeats)
    report(args, comparisons, seconds, same)


def report(args, comparisons, seconds: dict[str, list[float]], same: dict[str, bool]) -> None:
    table = Table(title=f"decoding speed: {args.new_tokens} new tokens a prompt, {args.threads} torch "
                        f"thread(s), median of {args.repeats}")
    for column in ("path", "median s/call", "tokens/s", "speedup", "target", "same tokens"):
        table.add_column(column, justify="left" if column == "path" else "right")
    result, rates = {}, {}
    for key, (fast, _), (slow, _), tokens, target in comparisons:
        rates[fast], rates[slow] = (tokens / statistics.median(seconds[name]) for name in (fast, slow))
        result[key] = round(rates[fast] / rates[slow], 2)
        table.add_row(fast, f"{statistics.median(seconds[fast]):.3f}", f"{rates[fast]:.0f}",
                      f"{result[key]:.1f}x", f">= {target:.0f}x", str(same[key]))
        table.add_row(slow, f"{statistics.median(seconds[slow]):.3f}", f"{rates[slow]:.0f}", "1.0x", "", "",
                      end_section=True)
    console.print(table)
    write_json(args.out, {
        **result,
        "tokens_per_s": {name: round(rate, 1) for name, rate in rates.items()},
        "seconds_per_call": seconds,
        "same_tokens": same,
        "settings": {"new_tokens": args.new_tokens, "batch": args.batch, "kv_batch": args.kv_batch,
                     "repeats": args.repeats, "threads": args.threads, "decoding": "greedy, no stop sequence",
                     "decoder": "width 256, 4 layers, 4 heads, vocab 1000, 16 image tokens of width 256",
                     "kv_prompt_tokens": 8, "batch_prompt_tokens": "4-16"},
        "machine": {"cpu": cpu_flags(), "cores": os.cpu_count(), "load_average": os.getloadavg(),
                    "torch": torch.__version__, "date": datetime.now(timezone.utc).isoformat(timespec="seconds")},
    })
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
