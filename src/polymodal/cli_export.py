"""`polymodal export onnx`, `polymodal export openvino` and `polymodal lora merge`.

Outside the `backends` package, and importing it inside the commands: importing a package runs
its `__init__`, which loads torch and every backend, and `polymodal --help` must not wait for
that (0.3 s against 2 s)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

console = Console()
export_app = typer.Typer(no_args_is_help=True, help="Export a model for deployment.")
lora_app = typer.Typer(no_args_is_help=True, help="LoRA adapters of a fine-tuned pretrained model.")

MODEL_HELP = ("hf:<repo id>, open_clip:<arch>/<tag>, open_clip:<arch>@<file>, or a directory "
              "(Hugging Face, open_clip, polymodal checkpoint or fine-tune)")


CALIB_HELP = ("Folder of images (searched recursively) to calibrate static int8 with; default: scikit-image's "
              "sample photographs and ShapesWorld scenes.")


@export_app.command("onnx")
def export_onnx_cmd(
    model: str = typer.Argument(..., help=MODEL_HELP),
    out: Path = typer.Argument(..., help="Directory to write (image.onnx, text.onnx, tokenizer, metadata)."),
    int8: bool = typer.Option(False, "--int8", help="Also write int8 quantised graphs (loaded by default)."),
    static: bool = typer.Option(False, "--static", help="With --int8: static quantisation (QDQ) calibrated on "
                                "images and captions, instead of dynamic."),
    calib: Path | None = typer.Option(None, "--calib", help=CALIB_HELP + " Implies --static."),
    calib_count: int = typer.Option(64, "--calib-count", min=1, help="Calibration images (and captions)."),
    check: bool = typer.Option(True, help="Reload the export and compare it with the PyTorch model."),
):
    """Export the image and text encoders to ONNX (dynamic batch axis) with the preprocessing metadata."""
    from .backends import load_model
    from .backends.onnx import export_onnx

    m = load_model(model)
    calibration = _calibration(m, calib, calib_count) if int8 and (static or calib) else None
    with console.status("exporting"):
        export_onnx(m, out, int8=int8, calibration=calibration)
    console.print(f"wrote {out}")
    if check:
        console.print(_check(m, out))


@export_app.command("openvino")
def export_openvino_cmd(
    model: str = typer.Argument(..., help=MODEL_HELP),
    out: Path = typer.Argument(..., help="Directory to write (the ONNX export plus OpenVINO IR of both encoders)."),
    int8: bool = typer.Option(False, "--int8", help="Also write int8 graphs, statically quantised by NNCF "
                              "(loaded by default)."),
    calib: Path | None = typer.Option(None, "--calib", help=CALIB_HELP),
    calib_count: int = typer.Option(64, "--calib-count", min=1, help="Calibration images (and captions)."),
    check: bool = typer.Option(True, help="Reload the export and compare it with the PyTorch model."),
):
    """Export to OpenVINO IR (int8 with --int8) beside ONNX; loading picks the faster engine per CPU."""
    from .backends import load_model
    from .backends.openvino import export_openvino

    m = load_model(model)
    calibration = _calibration(m, calib, calib_count) if int8 else None
    with console.status("exporting and quantising" if int8 else "exporting"):
        export_openvino(m, out, int8=int8, calibration=calibration)
    console.print(f"wrote {out}")
    if check:
        console.print(_check(m, out))


def _calibration(model, folder: Path | None, count: int):
    from .backends.calibration import calibration_images, calibration_texts
    from .backends.onnx import calibration_for

    images, skipped = calibration_images(count, folder)
    if skipped:
        console.print(f"calibration: skipped {skipped} unreadable image file(s) in {folder}")
    return calibration_for(model, images, calibration_texts(count))


def _check(model, out: Path) -> str:
    """Cosine similarity of each engine's embeddings (float32 and int8) against the PyTorch model's."""
    import torch

    from .backends.openvino import OpenVinoModel, engines_in, load_export

    size = model.config.image.image_size
    pixels = torch.randint(0, 256, (4, 3, size, size), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    texts = ["a photo of a cat", "a red circle left of a blue square", "two dogs", "a diagram"]
    ref_i, ref_t = model.encode_image(pixels), model.encode_text(texts)
    lines = []
    for engine in engines_in(out):
        int8_file = out / ("image.int8.xml" if engine == "openvino" else "image.int8.onnx")
        for int8 in (False, True) if int8_file.exists() else (False,):
            m = load_export(out, int8=int8, engine=engine)
            ci = (m.encode_image(pixels) * ref_i).sum(-1).min().item()
            ct = (m.encode_text(texts) * ref_t).sum(-1).min().item()
            name = "OpenVINO" if isinstance(m, OpenVinoModel) else "ONNX Runtime"
            lines.append(f"{name} {'int8' if int8 else 'float32'}: cosine vs PyTorch, image {ci:.5f}, "
                         f"text {ct:.5f} (min over 4)")
    return "\n".join(lines)


@lora_app.command("merge")
def lora_merge_cmd(
    adapters: Path = typer.Argument(..., help="A LoRA fine-tune directory (written by `polymodal train --lora`)."),
    out: Path = typer.Argument(..., help="Where to write the merged full model."),
):
    """Fold LoRA adapters into the base weights and save the full model (same outputs, no adapters)."""
    from .backends import merge_lora

    merge_lora(adapters, out)
    console.print(f"merged model: {out}")
