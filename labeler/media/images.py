"""Decoding image bytes safely (a bounded pixel count, fully loaded or a clear error) into the picture
a person sees: upright, 8 bits per channel, transparency over white.

Fetching (what may be fetched, and how much) lives in :mod:`labeler.media.fetching`.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from labeler.errors import ImageError  # noqa: F401 - raised here, imported from here

DEFAULT_MAX_PIXELS = 40_000_000  # ~ 6300 x 6300; a bigger classification image is an attack or a mistake
# What is kept of a decoded image: the models see 224 px (BLIP-2) or 48 px (CNN), so a 40-megapixel
# photo need not stay 120 MB in memory for as long as its request or its training run.
MAX_SIDE = 512


def decode(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """The picture in image bytes, as the models see it: :func:`open_checked`, then :func:`normalize`,
    at most ``MAX_SIDE`` pixels a side."""
    im = normalize(open_checked(data, max_pixels, draft=MAX_SIDE))
    im.thumbnail((MAX_SIDE, MAX_SIDE))
    return im


def open_checked(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, draft: int | None = None) -> Image.Image:
    """Decode image bytes fully (truncated files fail here, not later in the model), as stored
    (``format`` and mode kept).

    The size in the header is checked before any pixel is decoded, so a
    small file that claims 20000 x 20000 pixels costs nothing. ``draft``: a JPEG may be decoded at a
    reduced scale that keeps at least this many pixels a side (less memory, faster).
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
            width, height = im.size
            if width * height > max_pixels:
                raise ImageError(f"image of {width}x{height} pixels refused (limit {max_pixels} pixels)")
            if draft and im.format == "JPEG":
                im.draft(im.mode, (draft, draft))
            im.load()
    except ImageError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError,
            Image.DecompressionBombWarning, MemoryError) as exc:
        raise ImageError(f"cannot decode image: {exc}") from None
    return im


ORIENTATION = 0x0112  # the EXIF tag
_HIGH_DEPTH = {"I", "F", "I;16", "I;16L", "I;16B", "I;16N"}


def normalize(im: Image.Image) -> Image.Image:
    """The picture as Label Studio shows it, in a mode every model reads (L, RGB or the like).

    - EXIF orientation applied (a browser shows a phone photo upright; the model must see it so too);
    - 16-bit and float pixels scaled to 8 bits (``convert("RGB")`` clips them: a 16-bit scan would be
      white): 16-bit ranges divide by 257, floats in [0, 1] multiply by 255, anything else is stretched
      from its minimum to its maximum;
    - transparency composited over white, as a viewer shows it (dropping alpha would show whatever
      colour is stored under transparent pixels).
    """
    if im.getexif().get(ORIENTATION, 1) != 1:
        im = ImageOps.exif_transpose(im)
    if im.mode in _HIGH_DEPTH:
        im = Image.fromarray(_to_uint8(np.asarray(im), im.mode), "L")
    if im.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (im.mode == "P" and "transparency" in im.info):
        grey = im.mode in ("LA", "La")
        rgba = im.convert("RGBA")
        im = Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba).convert("L" if grey else "RGB")
    return im


def _to_uint8(a: np.ndarray, mode: str) -> np.ndarray:
    """8-bit pixels of a 16-bit or float image (see :func:`normalize`)."""
    a = np.nan_to_num(a.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
    if mode.startswith("I;16") or (mode == "I" and lo >= 0 and hi <= 65535):
        a = a / 257.0
    elif mode == "F" and lo >= 0 and hi <= 1:
        a = a * 255.0
    elif not (mode == "F" and lo >= 0 and hi <= 255):
        a = (a - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(a)
    return np.clip(np.round(a), 0, 255).astype(np.uint8)
