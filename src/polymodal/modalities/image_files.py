"""Reading image files and uploads: one reader for every caller (datasets, the index, the
server), every failure one UnreadableFileError naming the file and the reason.

Pillow only, no torch: `polymodal index` and the command line import it without loading torch."""

from __future__ import annotations

import io
import struct
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..data.schema import DataError, UnreadableFileError, media_problem

# Refused before decoding: a header may claim any size, and decoding it would take the memory.
MAX_IMAGE_PIXELS = 8192 * 8192
MAX_IMAGE_SIDE = 16384  # a 1-pixel-high strip this wide is still 16k pixels after resizing
# The errors a damaged, truncated or misnamed file raises while PIL opens or decodes it.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error)

# Our own limit above is lower than PIL's, so PIL's warning for the same files would only repeat it.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


def load_image(path: str | Path) -> Image.Image:
    """Open an image file as RGB (see `decode_image_bytes`); any unreadable file raises one
    UnreadableFileError (a DataError) naming it, printably whatever its name, and the reason."""
    return decode_image_bytes(read_image_bytes(path), path)


def read_image_bytes(path: str | Path) -> bytes:
    """The bytes of a media file, or UnreadableFileError with the reason it cannot be read."""
    problem = media_problem(path)  # a FIFO or a device would block or never end
    if problem:
        raise UnreadableFileError(path, problem)
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:  # it vanished since it was listed
        raise UnreadableFileError(path, "file not found") from None
    except PermissionError:
        raise UnreadableFileError(path, "permission denied") from None
    except OSError as err:  # an I/O error, a name too long
        raise UnreadableFileError(path, f"cannot be read ({err.strerror or err.__class__.__name__})") from None


def decode_image_bytes(data: bytes, name: str | Path) -> Image.Image:
    """Image file bytes -> an RGB PIL image (the first frame of an animation, EXIF rotation
    applied, 16-bit scaled to 8-bit); anything else raises UnreadableFileError (a DataError) naming
    `name` and the reason. Images over MAX_IMAGE_PIXELS or MAX_IMAGE_SIDE are refused from their
    header, before decoding."""
    if not data:
        raise UnreadableFileError(name, "empty file")
    try:
        with Image.open(io.BytesIO(data)) as img:
            _check_size(img, name)
            img.seek(0)
            return _to_rgb(ImageOps.exif_transpose(img))
    except DataError:
        raise
    except Image.DecompressionBombError:  # PIL refuses from the header too, at twice its own limit
        raise UnreadableFileError(name, f"too large (over {2 * Image.MAX_IMAGE_PIXELS:,} pixels: "
                                        "a decompression bomb?)") from None
    except UnidentifiedImageError:  # its message names a BytesIO object, which helps nobody
        raise UnreadableFileError(name, "not a readable image (unknown format, or damaged)") from None
    except _DECODE_ERRORS as err:
        reason = f"not a readable image ({err.__class__.__name__}: {_first_line(err)})"
        raise UnreadableFileError(name, reason) from None


def _check_size(img: Image.Image, name: str | Path) -> None:
    w, h = img.size
    if w * h > MAX_IMAGE_PIXELS or max(w, h) > MAX_IMAGE_SIDE:
        raise UnreadableFileError(name, f"too large ({w}x{h} pixels; the limit is {MAX_IMAGE_PIXELS:,} pixels "
                                        f"and {MAX_IMAGE_SIDE} a side)")
    if w < 1 or h < 1:
        raise UnreadableFileError(name, f"empty image ({w}x{h} pixels)")


def _to_rgb(img: Image.Image) -> Image.Image:
    """RGB, as the reference pipelines (transformers, open_clip) convert: alpha is dropped."""
    if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        # PIL's own conversion clips 16-bit values at 255 (an all-white image); scale instead.
        grey = np.asarray(img, dtype=np.float64) / 257.0
        return Image.fromarray(np.clip(np.rint(grey), 0, 255).astype(np.uint8)).convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")  # the palette's transparency is only understood through RGBA
    return img.convert("RGB")


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0][:120] if text else "no detail"
