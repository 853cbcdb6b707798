"""Image-embedding throughput of the ViT-B/32 CLIP architecture (random weights) on this machine.

    python benchmarks/clip_throughput.py [--batch 32] [--rounds 5] [--threads N] [--out runs/bench-onnx]

Side by side in one run, on the same images:
  reference        open_clip, eager float32 (`model.encode_image` under no_grad)
  polymodal        `polymodal.load("open_clip:ViT-B-32@...")` in PyTorch: inference mode, and bf16
                   autocast where the hardware does bf16 natively (`polymodal.utils.fast_bf16`)
  ORT float32      `polymodal export onnx`, run by ONNX Runtime (all graph optimisations)
  ORT int8         the same export with `--int8` (dynamic quantisation; 7-bit weights without VNNI)
Rounds are interleaved (reference, polymodal, ORT, ...) and each path's median images/s is
reported, with its ratio to the reference and the cosine similarity of its embeddings against
the reference float32 embeddings (minimum over the images).

Its figures are written to benchmarks/results/clip_throughput.json (committed).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from polymodal.utils import write_json

console = Console()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--out", type=Path, default=Path("runs/bench-clip"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    import open_clip

    import polymodal
    from polymodal.backends.onnx import OnnxModel, export_onnx, has_vnni
    from polymodal.utils import fast_bf16

    args.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    reference = open_clip.create_model("ViT-B-32").eval()  # random weights
    weights = args.out / "vit-b-32-random.pt"
    torch.save(reference.state_dict(), weights)
    model = polymodal.load(f"open_clip:ViT-B-32@{weights}")
    if not (args.out / "onnx" / "image.int8.onnx").exists():
        with console.status("exporting to ONNX (float32 + int8)"):
            export_onnx(model, args.out / "onnx", int8=True)
    ort32 = OnnxModel(args.out / "onnx", int8=False, threads=args.threads)
    ort8 = OnnxModel(args.out / "onnx", int8=True, threads=args.threads)

    pixels = torch.randint(0, 256, (args.batch, 3, 224, 224), generator=torch.Generator().manual_seed(1),
                           dtype=torch.uint8)
    normalized = model.normalize(pixels)  # the reference gets what open_clip's preprocess gives

    def run_reference():
        with torch.no_grad():
            return torch.nn.functional.normalize(reference.encode_image(normalized), dim=-1)

    bf16 = fast_bf16("cpu")

    def run_polymodal():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            return model.encode_image(pixels, batch_size=args.batch).float()

    paths = {"open_clip eager float32 (reference)": run_reference,
             f"polymodal PyTorch ({'bf16 autocast' if bf16 else 'float32'}, inference mode)": run_polymodal,
             "polymodal ONNX Runtime float32": lambda: ort32.encode_image(pixels, batch_size=args.batch),
             f"polymodal ONNX Runtime int8 ({'8' if has_vnni() else '7'}-bit weights)":
                 lambda: ort8.encode_image(pixels, batch_size=args.batch)}
    outputs = {name: fn() for name, fn in paths.items()}  # warm-up, and the embeddings compared
    rates: dict[str, list[float]] = {name: [] for name in paths}
    for r in range(args.rounds):
        for name, fn in paths.items():
            t = time.perf_counter()
            fn()
            rates[name].append(args.batch / (time.perf_counter() - t))
        console.print(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{v[-1]:.1f}" for v in rates.values()))

    ref_rate = statistics.median(rates[next(iter(paths))])
    ref_out = outputs[next(iter(paths))]
    table = Table(title=f"ViT-B/32 image embeddings, batch {args.batch}, {args.threads} threads, "
                        f"median of {args.rounds} rounds")
    for col in ("path", "images/s", "× reference", "cosine vs float32 (min)"):
        table.add_column(col, justify="left" if col == "path" else "right")
    figures = {"batch": args.batch, "threads": args.threads, "rounds": args.rounds, "paths": {}}
    for name in paths:
        rate = statistics.median(rates[name])
        cosine = (outputs[name] * ref_out).sum(-1).min().item()
        table.add_row(name, f"{rate:.1f}", f"{rate / ref_rate:.2f}", f"{cosine:.5f}")
        figures["paths"][name] = {"images_per_s": rate, "ratio_to_reference": rate / ref_rate, "min_cosine": cosine}
    console.print(table)
    write_json(Path(__file__).parent / "results" / "clip_throughput.json", figures)


if __name__ == "__main__":
    main()
