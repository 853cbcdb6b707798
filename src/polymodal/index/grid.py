"""A contact sheet of search results: thumbnails with rank and score, one PNG."""

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
        try:  # the one reader: a file replaced since it was indexed may now be anything
            img = load_image(hit.path)
            img.thumbnail((thumb, thumb), Image.NEAREST if max(img.size) < thumb else Image.BICUBIC)
            sheet.paste(img, (x + (thumb - img.width) // 2, y + (thumb - img.height) // 2))
        except DataError:  # moved, deleted or unreadable since it was indexed: an empty red frame
            draw.rectangle((x, y, x + thumb, y + thumb), outline="red")
        draw.text((x, y + thumb + 2), f"{i + 1}. {hit.score:.3f}", fill="black")
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        sheet.save(tmp, format="PNG")
    return out
