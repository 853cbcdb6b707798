"""A contact sheet of search results: thumbnails with rank and score, one PNG (an audio result is
a grey cell with its file name: a PNG cannot play it)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw

from ..errors import DataError
from ..modalities.image_files import load_image
from ..utils import atomic_path


def contact_sheet(hits: Sequence, out: str | Path, title: str = "", thumb: int = 128, columns: int = 5) -> Path:
    out = Path(out)
    rows = max(1, -(-len(hits) // columns))
    label, head = 16, 22 if title else 0
    sheet = Image.new("RGB", (columns * (thumb + 8) + 8, head + rows * (thumb + label + 8) + 8), "white")
    draw = ImageDraw.Draw(sheet)
    if title:
        draw.text((8, 4), title[:120], fill="black")
    for i, hit in enumerate(hits):
        x, y = 8 + (i % columns) * (thumb + 8), head + 8 + (i // columns) * (thumb + label + 8)
        if getattr(hit, "modality", "image") == "audio":
            _audio_cell(draw, hit.path, x, y, thumb)
        else:
            _image_cell(sheet, draw, hit.path, x, y, thumb)
        draw.text((x, y + thumb + 2), f"{i + 1}. {hit.score:.3f}", fill="black")
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        sheet.save(tmp, format="PNG")
    return out


def _image_cell(sheet: Image.Image, draw: ImageDraw.ImageDraw, path: str, x: int, y: int, thumb: int) -> None:
    try:  # the one reader: a file replaced since it was indexed may now be anything
        img = load_image(path)
        img.thumbnail((thumb, thumb), Image.NEAREST if max(img.size) < thumb else Image.BICUBIC)
        sheet.paste(img, (x + (thumb - img.width) // 2, y + (thumb - img.height) // 2))
    except DataError:  # moved, deleted or unreadable since it was indexed: an empty red frame
        draw.rectangle((x, y, x + thumb, y + thumb), outline="red")


def _audio_cell(draw: ImageDraw.ImageDraw, path: str, x: int, y: int, thumb: int) -> None:
    """A grey cell that says "audio" and the file's name (as much of it as fits)."""
    draw.rectangle((x, y, x + thumb, y + thumb), fill="#eeeeee", outline="#888888")
    draw.text((x + 4, y + 4), "audio", fill="black")
    name = Path(path).name.encode("ascii", "replace").decode()  # any font draws ASCII; a lone surrogate breaks some
    draw.text((x + 4, y + thumb // 2), name[:max(1, thumb // 7)], fill="black")
