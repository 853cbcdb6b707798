"""A contact sheet of search results: thumbnails with rank and score, one PNG."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw

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
        try:
            with Image.open(hit.path) as img:
                img = img.convert("RGB")
                img.thumbnail((thumb, thumb), Image.NEAREST if max(img.size) < thumb else Image.BICUBIC)
                sheet.paste(img, (x + (thumb - img.width) // 2, y + (thumb - img.height) // 2))
        except OSError:  # the file moved since it was indexed
            draw.rectangle((x, y, x + thumb, y + thumb), outline="red")
        draw.text((x, y + thumb + 2), f"{i + 1}. {hit.score:.3f}", fill="black")
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        sheet.save(tmp, format="PNG")
    return out
