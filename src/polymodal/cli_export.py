"""`polymodal export onnx` and `polymodal lora merge`.

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


@export_app.command("onnx")
def export_onnx_cmd(
    model: str = typer.Argument(..., help=MODEL_HELP),
    out: Path = typer.Argument(..., help="Directory to write (image.onnx, text.onnx, tokenizer, metadata)."),
    int8: bool = typer.Option(False, "--int8", help="Also write int8 dynamically quantised graphs "
                              "(loaded by default)."),
    check: bool = typer.Option(True, help="Reload the export and compare it with the PyTorch model."),
):
    """Export the image and text encoders to ONNX (dynamic batch axis) with the preprocessing metadata."""
    from .backends import load_model
    from .backends.onnx import export_onnx

    m = load_model(model)
    with console.status("exporting"):
        export_onnx(m, out, int8=int8)
    console.print(f"wrote {out}")
    if check:
        console.print(_check(m, out))


def _check(model, out: Path) -> str:
    """Cosine similarity of the export's embeddings against the PyTorch model's on random inputs."""
    import torch

    from .backends.onnx import load_onnx

    size = model.config.image.image_size
    pixels = torch.randint(0, 256, (4, 3, size, size), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    texts = ["a photo of a cat", "a red circle left of a blue square", "two dogs", "a diagram"]
    ref_i, ref_t = model.encode_image(pixels), model.encode_text(texts)
    lines = []
    for int8 in (False, True) if (out / "image.int8.onnx").exists() else (False,):
        m = load_onnx(out, int8=int8)
        ci = (m.encode_image(pixels) * ref_i).sum(-1).min().item()
        ct = (m.encode_text(texts) * ref_t).sum(-1).min().item()
        lines.append(f"{'int8' if int8 else 'float32'}: cosine vs PyTorch, image {ci:.5f}, text {ct:.5f} (min over 4)")
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
