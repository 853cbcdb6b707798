"""Shared by the search-engine tests: a tiny untrained model and a folder of images to index."""

import shutil
from pathlib import Path

import polymodal
from polymodal.models.checkpoint import save_checkpoint

CAPTIONS = ["a small red circle", "a big blue square to the left of a green star", "a yellow triangle"]


def make_model(directory: Path, preset: str = "shapes-cnn-tiny", seed: int = 0, **overrides) -> Path:
    """Save a random-initialised checkpoint (indexing needs only a fixed encoder)."""
    import torch

    torch.manual_seed(seed)
    save_checkpoint(polymodal.create_model(preset, texts=CAPTIONS, **overrides), directory)
    return directory


def make_collection(directory: Path, shapes_dir: Path, n: int = 40, split: str = "test") -> Path:
    """n ShapesWorld images, with one caption sidecar, a corrupt file and a duplicate."""
    directory.mkdir(parents=True)
    files = sorted((shapes_dir / "images" / split).iterdir())[:n]
    for file in files:
        shutil.copy(file, directory / file.name)
    (directory / files[0].with_suffix(".txt").name).write_text("a caption from a sidecar file\n")
    (directory / "corrupt.png").write_bytes(b"not an image at all")
    sub = directory / "nested"
    sub.mkdir()
    shutil.copy(files[1], sub / "copy-of-second.png")  # same bytes: a duplicate
    return directory


def make_index(root: Path, shapes_dir: Path, n: int) -> tuple[Path, Path, Path]:
    """A random model, a collection of n images and its index under `root`: (model, images, index)."""
    from polymodal.index import BuildConfig, build_index

    model_dir = make_model(root / "model")
    images = make_collection(root / "images", shapes_dir, n=n)
    build_index(BuildConfig(source=str(images), out=str(root / "idx"), model=str(model_dir), progress=False))
    return model_dir, images, root / "idx"
