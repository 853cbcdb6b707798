"""polymodal: multimodal learning toolkit.

    import polymodal
    model = polymodal.load("runs/demo/model")
    model.similarity(["cat.png"], ["a red circle", "a blue square"], softmax=True)
"""

from __future__ import annotations

from pathlib import Path

__version__ = "0.1.0"


def load(source: str | Path, device: str = "cpu"):
    """A model with `encode_image`, `encode_text` and `similarity` that accept raw inputs (image
    paths or PIL images, strings), from: a polymodal checkpoint directory, `hf:<repo id>`,
    `open_clip:<arch>/<tag>`, `open_clip:<arch>@<checkpoint file>`, a local Hugging Face or
    open_clip model directory, a fine-tune (full or LoRA adapters) or an ONNX export."""
    from .backends import load_model

    return load_model(source, device)


def create_model(name: str, texts=None, **overrides):
    """An untrained model from an architecture preset (see `list_models()`)."""
    from .models.factory import create_model as _create

    return _create(name, texts, **overrides)


def list_models(pattern: str = "*") -> list[str]:
    """Architecture preset names, filtered with a shell-style pattern."""
    from .config import list_models as _list

    return _list(pattern)


def load_dataset(source: str | Path, format: str = "auto", strict: bool = False, **options):
    """Records from a dataset in any supported format (manifest, COCO, CSV/TSV, class folder)."""
    from .data.formats import load_records

    return load_records(source, format=format, strict=strict, **options)


def __getattr__(name: str):
    if name == "Index":  # the persistent embedding index (polymodal.index), imported on first use
        from .index import Index

        return Index
    raise AttributeError(f"module 'polymodal' has no attribute '{name}'")


__all__ = ["Index", "__version__", "create_model", "list_models", "load", "load_dataset"]
