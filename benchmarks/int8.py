"""Int8 image embeddings of the ViT-B/32 CLIP architecture (random weights) against open_clip
eager float32, and the float32 limit of this CPU (issue 16, part 4).

    python benchmarks/int8.py [--batch 32] [--rounds 5] [--threads 2] [--variants] [--quick]

Side by side in one run, on the same 32 realistic images (scikit-image photographs, cropped, and
ShapesWorld scenes, none of them used for calibration):
  reference            open_clip `encode_image`, eager float32, no_grad
  ORT float32          the ONNX export (`polymodal export onnx`) in ONNX Runtime
  ORT dynamic int8     `--int8`: activations quantised per batch at run time
  ORT static int8      `--int8 --static`: QDQ, activation ranges calibrated on 64 other images
  OpenVINO float32     `polymodal export openvino`
  OpenVINO int8        `--int8`: NNCF post-training quantisation on the same calibration images
  OpenVINO bf16        the float32 graph with OpenVINO's bf16 hint (only where the CPU has bf16)
`--variants` adds ONNX Runtime's other static settings (QOperator, every op type, per-tensor).
Rounds are interleaved; each path's median images/s, its ratio to the reference and the cosine of
its embeddings against the reference (minimum over the images) are reported.

The float32 limit: the tower's FLOPs per image (torch's FLOP counter) against this CPU's measured
float32 matrix-product rate on the tower's largest product (the best of PyTorch, NumPy and ONNX
Runtime, best of 15 repeats; the medians beside it).

Figures: benchmarks/results/scale_int8.json (`int8_speedup` and `int8_cosine`: the fastest int8
path whose cosine is at least 0.99; `fp32_limit_images_per_s`; every path's images/s).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from polymodal.utils import write_json

console = Console()
COSINE_FLOOR = 0.99
# --quick: a small ViT (6 layers of width 384, 32-pixel patches at 224) instead of ViT-B/32.
QUICK_ARCH = {"embed_dim": 256, "vision_cfg": {"image_size": 224, "layers": 6, "width": 384, "patch_size": 32},
              "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 256, "heads": 4, "layers": 2}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--calib", type=int, default=64, help="calibration images (and captions)")
    ap.add_argument("--variants", action="store_true", help="also ONNX Runtime's other static int8 settings")
    ap.add_argument("--quick", action="store_true", help="a small ViT, batch 8, 2 rounds, 16 calibration images")
    ap.add_argument("--onednn-isa", default=None, help="cap oneDNN at this ISA (e.g. AVX2: OpenVINO's kernels, and "
                    "PyTorch's oneDNN ops, as on an older CPU; ONNX Runtime's own kernels are unaffected)")
    ap.add_argument("--out", type=Path, default=Path("runs/bench-int8"))
    args = ap.parse_args()
    if args.onednn_isa:  # read by oneDNN when OpenVINO first runs a graph
        os.environ["ONEDNN_MAX_CPU_ISA"] = args.onednn_isa.upper()
    if args.quick:
        args.batch, args.rounds, args.calib = 8, 2, 16
        args.out = args.out / "quick"
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)

    reference, model = build_models(args)
    pixels = eval_pixels(model, args.batch)
    exports = build_exports(model, args)
    paths = make_paths(reference, model, pixels, exports, args)
    rates, outputs = measure(paths, args.rounds, args.batch)
    limit = fp32_limit(reference, args.threads, args.batch)
    figures = report(rates, outputs, limit, args, exports)
    name = "scale_int8" + ("_quick" if args.quick else "") + (f"_{args.onednn_isa.lower()}" if args.onednn_isa else "")
    figures["load_average_1min"] = os.getloadavg()[0]  # the machine is shared: how busy it was
    write_json(Path(__file__).parent / "results" / f"{name}.json", figures)


def build_models(args):
    """open_clip's model with random weights, and polymodal's load of the same weights."""
    import open_clip

    import polymodal

    arch = "ViT-B-32"
    if args.quick:
        configs = args.out / "configs"
        configs.mkdir(exist_ok=True)
        arch = "polymodal-int8-quick"
        (configs / f"{arch}.json").write_text(json.dumps(QUICK_ARCH))
        open_clip.add_model_config(configs)
    torch.manual_seed(0)
    reference = open_clip.create_model(arch, pretrained=None).eval()
    weights = args.out / f"{arch}-random.pt"
    if not weights.exists():
        torch.save(reference.state_dict(), weights)
    return reference, polymodal.load(f"open_clip:{arch}@{weights}")


def eval_pixels(model, count: int) -> torch.Tensor:
    """(count, 3, S, S) uint8: realistic images that calibration does not see (another seed)."""
    from polymodal.backends.calibration import calibration_images

    images, _ = calibration_images(count, seed=12345)
    return torch.from_numpy(np.stack([model.config.image.pixels(img) for img in images]))


def build_exports(model, args) -> dict[str, Path]:
    """The OpenVINO export (ONNX float32 and dynamic int8, OpenVINO float32 and int8) and ONNX
    Runtime's static int8 files beside it; reused when they exist (delete --out to rebuild)."""
    from polymodal.backends.calibration import calibration_images, calibration_texts
    from polymodal.backends.onnx import calibration_for, quantize_static_int8
    from polymodal.backends.openvino import export_openvino

    export = args.out / "export"
    images, _ = calibration_images(args.calib)
    calibration = calibration_for(model, images, calibration_texts(args.calib))
    if not (export / "image.int8.xml").exists():
        t = time.perf_counter()
        with console.status("exporting ONNX + OpenVINO, NNCF int8"):
            export_openvino(model, export, int8=True, calibration=calibration)
        console.print(f"OpenVINO export with NNCF int8: {time.perf_counter() - t:.0f} s")
    files = {"dynamic": export / "image.int8.onnx", "static": export / "image.ort-static.onnx"}
    if not files["static"].exists():
        t = time.perf_counter()
        with console.status("ONNX Runtime static int8 (QDQ)"):
            quantize_static_int8(export / "image.onnx", files["static"], calibration.batches("image"), "pixels")
        console.print(f"ONNX Runtime static quantisation: {time.perf_counter() - t:.0f} s")
    if args.variants:
        files.update(build_variants(export, calibration.batches("image")))
    return {"export": export, **files}


def build_variants(export: Path, batches: list[np.ndarray]) -> dict[str, Path]:
    """ONNX Runtime's other static settings: the QOperator format, every op type, per-tensor weights."""
    import tempfile

    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from polymodal.backends.cpu import has_vnni

    settings = {"qoperator": dict(quant_format=QuantFormat.QOperator, op_types_to_quantize=["MatMul", "Gemm"]),
                "all-ops": dict(quant_format=QuantFormat.QDQ),
                "per-tensor": dict(quant_format=QuantFormat.QDQ, op_types_to_quantize=["MatMul", "Gemm"],
                                   per_channel=False)}

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.feeds = iter([{"pixels": b} for b in batches])

        def get_next(self):
            return next(self.feeds, None)

    files = {}
    with tempfile.TemporaryDirectory() as scratch:
        prepared = Path(scratch) / "prepared.onnx"
        for name, kw in settings.items():
            files[name] = export / f"image.ort-{name}.onnx"
            if files[name].exists():
                continue
            if not prepared.exists():
                quant_pre_process(str(export / "image.onnx"), str(prepared), skip_symbolic_shape=True)
            kw = {"per_channel": True, **kw}
            quantize_static(str(prepared), str(files[name]), Reader(), reduce_range=not has_vnni(),
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, **kw)
    return files


def make_paths(reference, model, pixels: torch.Tensor, exports: dict[str, Path], args) -> dict:
    """name -> a function that embeds the batch (B, E)."""
    import onnxruntime as ort

    from polymodal.backends.cpu import cpu_flags
    from polymodal.backends.onnx import session_options
    from polymodal.backends.openvino import OpenVinoModel, load_export

    normalized = model.normalize(pixels)  # what open_clip's own preprocessing gives the reference
    numpy_pixels = pixels.numpy()

    def run_reference():
        with torch.no_grad():
            return torch.nn.functional.normalize(reference.encode_image(normalized), dim=-1)

    def ort_path(file: Path):
        session = ort.InferenceSession(str(file), session_options(args.threads), providers=["CPUExecutionProvider"])
        return lambda: torch.from_numpy(session.run(None, {"pixels": numpy_pixels})[0])

    ov32 = load_export(exports["export"], int8=False, engine="openvino", threads=args.threads)
    ov8 = load_export(exports["export"], int8=True, engine="openvino", threads=args.threads)
    paths = {"open_clip eager float32 (reference)": run_reference,
             "ONNX Runtime float32": ort_path(exports["export"] / "image.onnx"),
             "ONNX Runtime dynamic int8": ort_path(exports["dynamic"]),
             "ONNX Runtime static int8 (QDQ)": ort_path(exports["static"]),
             "OpenVINO float32": lambda: ov32.encode_image(pixels, batch_size=args.batch),
             "OpenVINO int8 (NNCF)": lambda: ov8.encode_image(pixels, batch_size=args.batch)}
    for name in ("qoperator", "all-ops", "per-tensor"):
        if name in exports:
            paths[f"ONNX Runtime static int8 ({name})"] = ort_path(exports[name])
    if ("avx512_bf16" in cpu_flags() or "amx_bf16" in cpu_flags()) and not args.onednn_isa:
        bf16 = OpenVinoModel(exports["export"], int8=False, threads=args.threads)
        bf16.image_session = _ov_bf16_session(exports["export"] / "image.xml", args.threads)
        paths["OpenVINO bf16 hint"] = lambda: bf16.encode_image(pixels, batch_size=args.batch)
    return paths


def _ov_bf16_session(xml: Path, threads: int):
    import openvino as ov

    from polymodal.backends.openvino import _CompiledSession

    config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "bf16", "INFERENCE_NUM_THREADS": threads}
    return _CompiledSession(ov.Core().compile_model(str(xml), "CPU", config))


def measure(paths: dict, rounds: int, batch: int) -> tuple[dict[str, list[float]], dict[str, torch.Tensor]]:
    outputs = {name: fn() for name, fn in paths.items()}  # warm-up, and the embeddings compared
    rates: dict[str, list[float]] = {name: [] for name in paths}
    for r in range(rounds):
        for name, fn in paths.items():
            t = time.perf_counter()
            fn()
            rates[name].append(batch / (time.perf_counter() - t))
        console.print(f"round {r + 1}/{rounds}: " + ", ".join(f"{v[-1]:.1f}" for v in rates.values()))
    return rates, outputs


def fp32_limit(reference, threads: int, batch: int, repeats: int = 15) -> dict:
    """Images/s the tower would reach if every FLOP ran at this CPU's float32 matmul rate: the
    best rate of three libraries' matrix products (PyTorch, NumPy's BLAS, ONNX Runtime's MLAS)."""
    from torch.utils.flop_counter import FlopCounterMode

    size = reference.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    # The fused attention kernel of nn.MultiheadAttention is invisible to the counter: count the plain path.
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            reference.encode_image(torch.zeros(1, 3, size, size))
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    flops_per_image = counter.get_total_flops()  # 2 per multiply-add
    # The MLP's first product at this batch: (B * tokens, width) x (width, 4 * width).
    width = reference.visual.conv1.out_channels
    tokens = (size // reference.visual.conv1.kernel_size[0]) ** 2 + 1
    a = np.random.default_rng(0).standard_normal((batch * tokens, width), dtype=np.float32)
    b = np.random.default_rng(1).standard_normal((width, 4 * width), dtype=np.float32)
    flops = 2 * a.shape[0] * width * 4 * width
    rates = {name: _rates(fn, flops, repeats) for name, fn in _matmuls(a, b, threads).items()}
    best = max(rates, key=lambda n: max(rates[n]))
    gflops = max(rates[best]) / 1e9  # the limit is what the CPU can do: the best repeat
    return {"gflop_per_image": flops_per_image / 1e9, "matmul_gflop_per_s": gflops, "matmul_library": best,
            "matmul_gflop_per_s_median": {n: statistics.median(r) / 1e9 for n, r in rates.items()},
            "threads": threads, "images_per_s": gflops * 1e9 / flops_per_image}


def _matmuls(a: np.ndarray, b: np.ndarray, threads: int) -> dict:
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from polymodal.backends.onnx import session_options

    graph = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["c"])], "matmul",
                              [helper.make_tensor_value_info("a", TensorProto.FLOAT, list(a.shape))],
                              [helper.make_tensor_value_info("c", TensorProto.FLOAT, [a.shape[0], b.shape[1]])],
                              [numpy_helper.from_array(b, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    session = ort.InferenceSession(model.SerializeToString(), session_options(threads),
                                   providers=["CPUExecutionProvider"])
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    return {"torch": lambda: torch.mm(ta, tb), "numpy": lambda: a @ b,
            "onnxruntime": lambda: session.run(None, {"a": a})}


def _rates(fn, flops: int, repeats: int) -> list[float]:
    fn()
    rates = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        rates.append(flops / (time.perf_counter() - t))
    return rates


def report(rates, outputs, limit: dict, args, exports) -> dict:
    from polymodal.backends.cpu import choose_engine, int8_tier

    names = list(rates)
    ref_name = names[0]
    ref_rate, ref_out = statistics.median(rates[ref_name]), outputs[ref_name]
    table = Table(title=f"{'small ViT (--quick)' if args.quick else 'ViT-B/32'} image embeddings, batch "
                        f"{args.batch}, {args.threads} threads, median of {args.rounds} rounds "
                        f"(CPU int8 tier: {int8_tier()})")
    for col in ("path", "images/s", "× reference", "cosine vs float32 (min)"):
        table.add_column(col, justify="left" if col == "path" else "right")
    figures = {"model": "small ViT (--quick)" if args.quick else "ViT-B-32 (random weights)", "batch": args.batch,
               "threads": args.threads, "rounds": args.rounds, "calibration_images": args.calib,
               "int8_tier": int8_tier(), "onednn_isa_cap": args.onednn_isa, "paths": {}}
    for name in names:
        rate = statistics.median(rates[name])
        cosine = (outputs[name] * ref_out).sum(-1).min().item()
        table.add_row(name, f"{rate:.1f}", f"{rate / ref_rate:.2f}", f"{cosine:.5f}")
        figures["paths"][name] = {"images_per_s": rate, "ratio_to_reference": rate / ref_rate, "min_cosine": cosine}
    table.add_row("float32 limit (FLOPs / measured matmul rate)", f"{limit['images_per_s']:.1f}",
                  f"{limit['images_per_s'] / ref_rate:.2f}", "")
    console.print(table)
    console.print(f"{limit['gflop_per_image']:.2f} GFLOP per image; float32 matmul {limit['matmul_gflop_per_s']:.0f} "
                  f"GFLOP/s ({limit['matmul_library']}, best of its repeats) on {args.threads} threads")
    int8 = {n: v for n, v in figures["paths"].items() if "int8" in n and v["min_cosine"] >= COSINE_FLOOR}
    best = max(int8, key=lambda n: int8[n]["images_per_s"]) if int8 else None
    engine = choose_engine(["openvino", "onnx"])
    figures.update({"int8_speedup": int8[best]["ratio_to_reference"] if best else None,
                    "int8_cosine": int8[best]["min_cosine"] if best else None, "int8_best_path": best,
                    "auto_engine": engine, "reference_images_per_s": ref_rate,
                    "fp32_limit_images_per_s": limit["images_per_s"], "fp32_limit": limit})
    console.print(f"fastest int8 at cosine ≥ {COSINE_FLOOR}: {best}; polymodal.load picks {engine} on this CPU")
    return figures


if __name__ == "__main__":
    main()
