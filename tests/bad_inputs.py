"""A corpus of awkward and broken input files, generated on the spot, for the reader tests.

`write_corpus(folder)` writes images that every reader must accept (odd names, odd modes, EXIF
rotation, animation) and files that every reader must skip and name (bad names, bombs, empty,
truncated, not an image, symlink loops, dangling links, FIFOs). Each good image has its own content,
so none is dropped as a duplicate.
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

NOT_UTF8_NAME = b"bad-\xff\xfe-name.png"  # a name that is not UTF-8 (a Latin-1 file system's)


@dataclass
class Corpus:
    folder: Path
    good: dict[str, Path]  # what it tests -> file
    bad: dict[str, tuple[Path, str]]  # what it tests -> (file, a fragment of the reason)
    # the bad files whose problem shows from the name and the file's status alone (no decoding)
    bad_by_status: tuple[str, ...] = ("not UTF-8 name", "symlink loop", "dangling symlink", "fifo")


def noise(seed: int, size=(24, 20)) -> Image.Image:
    return Image.fromarray(np.random.RandomState(seed).randint(0, 256, (size[1], size[0], 3), np.uint8))


def encode(img: Image.Image, fmt: str, **options) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **options)
    return buf.getvalue()


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height RGB pixels, with a few bytes of data after it."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + chunk(b"IEND", b""))


def good_images() -> dict[str, tuple[str, bytes]]:
    """What it tests -> (file name, bytes) for images every reader must read."""
    exif = noise(9).getexif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees to display
    animated = encode(noise(10).convert("P"), "GIF", save_all=True, append_images=[noise(11).convert("P")])
    sixteen = Image.fromarray((np.arange(24 * 20, dtype=np.uint16).reshape(20, 24) * 131).astype(np.uint16))
    return {
        "plain": ("plain.png", encode(noise(1), "PNG")),
        "space": ("with space.png", encode(noise(2), "PNG")),
        "leading dash": ("-leading-dash.png", encode(noise(3), "PNG")),
        "unicode": ("ünïcødé 画像.png", encode(noise(4), "PNG")),
        "newline": ("new\nline.png", encode(noise(5), "PNG")),
        "cmyk": ("cmyk.jpg", encode(noise(6).convert("CMYK"), "JPEG")),
        "16-bit": ("sixteen-bit.png", encode(sixteen, "PNG")),
        "palette transparency": ("palette.png", encode(noise(7).convert("P"), "PNG", transparency=0)),
        "LA": ("grey-alpha.png", encode(noise(8).convert("LA"), "PNG")),
        "exif rotation": ("rotated.jpg", encode(noise(9), "JPEG", exif=exif)),
        "animated": ("animated.gif", animated),
    }


def write_corpus(folder: Path) -> Corpus:
    folder.mkdir(parents=True, exist_ok=True)
    good = {}
    for what, (name, data) in good_images().items():
        (folder / name).write_bytes(data)
        good[what] = folder / name
    real_png = encode(noise(20, (64, 64)), "PNG")
    bad_bytes = {
        "decompression bomb": ("bomb.png", png_claiming(60_000, 60_000), "too large"),
        "huge dimensions": ("huge.png", png_claiming(10_000, 8_000), "too large (10000x8000"),
        "empty": ("empty.png", b"", "empty file"),
        "truncated": ("truncated.png", real_png[: len(real_png) // 2], "not a readable image"),
        "text as png": ("text.png", b"this is not an image\n", "not a readable image"),
    }
    bad = {what: (folder / name, reason) for what, (name, _, reason) in bad_bytes.items()}
    for path, (_, data, _) in zip(bad.values(), bad_bytes.values()):
        path[0].write_bytes(data)
    not_utf8 = Path(os.fsdecode(os.path.join(os.fsencode(folder), NOT_UTF8_NAME)))
    not_utf8.write_bytes(encode(noise(21), "PNG"))  # a good image: only its name is bad
    bad["not UTF-8 name"] = (not_utf8, "file name is not valid UTF-8")
    os.symlink("loop.png", folder / "loop.png")
    bad["symlink loop"] = (folder / "loop.png", "a symlink loop")
    os.symlink("nowhere.png", folder / "dangling.png")
    bad["dangling symlink"] = (folder / "dangling.png", "file not found")
    os.mkfifo(folder / "pipe.png")  # reading it would block for ever
    bad["fifo"] = (folder / "pipe.png", "not a regular file")
    return Corpus(folder, good, bad)
