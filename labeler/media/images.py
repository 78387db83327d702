"""Decoding image bytes safely (a bounded pixel count, fully loaded or a clear error) into the picture
a person sees: upright, 8 bits per channel, transparency over white.

Fetching (what may be fetched, and how much) lives in :mod:`labeler.media.fetching`.
"""

from __future__ import annotations

import hashlib
import io
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from labeler.errors import ImageError  # noqa: F401 - raised here, imported from here

DEFAULT_MAX_PIXELS = 40_000_000  # ~ 6300 x 6300; a bigger classification image is an attack or a mistake
# What is kept of a decoded image: the models see 224 x 224 (BLIP-2) or 48 x 48 (CNN), so a 40-megapixel
# photo need not stay 120 MB in memory for as long as its request or its training run. Bigger images are
# reduced to about KEEP_PIXELS, never below MIN_SHORT_SIDE on the short side (a panorama keeps its rows).
KEEP_PIXELS = 512 * 512
MIN_SHORT_SIDE = 256
# Bumped whenever decode() returns other pixels for the same bytes: cached embeddings are keyed with it.
DECODE_VERSION = 2


def content_key(data: bytes) -> str:
    """SHA-256 of the image bytes (and of the decoder's version, so entries made from other pixels are not
    reused): the same picture under any URL hits the same entry."""
    return hashlib.sha256(f"decode-v{DECODE_VERSION}:".encode() + data).hexdigest()


def decode(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """The picture in image bytes, as the models see it: :func:`open_checked`, then :func:`normalize`,
    reduced to :func:`kept_size`."""
    im = normalize(open_checked(data, max_pixels, draft=True))
    size = kept_size(*im.size)
    return im.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0) if size != im.size else im


def kept_size(width: int, height: int) -> tuple[int, int]:
    """``(w, h)`` scaled by ``min(1, max(sqrt(KEEP_PIXELS / (w h)), MIN_SHORT_SIDE / min(w, h)))``."""
    scale = min(1.0, max((KEEP_PIXELS / max(1, width * height)) ** 0.5, MIN_SHORT_SIDE / max(1, min(width, height))))
    return max(1, round(width * scale)), max(1, round(height * scale))


def open_checked(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, draft: bool = False) -> Image.Image:
    """Decode image bytes fully (truncated files fail here, not later in the model), as stored
    (``format`` and mode kept).

    The size in the header is checked before any pixel is decoded, so a
    small file that claims 20000 x 20000 pixels costs nothing. ``draft``: a JPEG may be decoded at a
    reduced scale that keeps at least :func:`kept_size` (less memory, faster).
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
            width, height = im.size
            if width * height > max_pixels:
                raise ImageError(f"image of {width}x{height} pixels refused (limit {max_pixels} pixels)")
            if draft and im.format == "JPEG":
                im.draft(im.mode, kept_size(width, height))
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
      white): integers from the smallest ``2**b - 1`` range (b = 8 ... 16) that holds them (a 12-bit
      camera or microscope image in a 16-bit file is not made black), floats in [0, 1] times 255,
      anything else stretched from its minimum to its maximum;
    - transparency composited over white, as a viewer shows it (dropping alpha would show whatever
      colour is stored under transparent pixels).
    """
    if im.getexif().get(ORIENTATION, 1) != 1:
        im = ImageOps.exif_transpose(im)
    if im.mode in _HIGH_DEPTH:
        im = Image.fromarray(_to_uint8(np.asarray(im), im.mode, kept_size(*im.size)), "L")
    if im.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (im.mode == "P" and "transparency" in im.info):
        grey = im.mode in ("LA", "La")
        rgba = im.convert("RGBA")
        im = Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba).convert("L" if grey else "RGB")
    return im


def _to_uint8(a: np.ndarray, mode: str, keep: tuple[int, int] | None = None) -> np.ndarray:
    """8-bit pixels of a 16-bit or float image (see :func:`normalize`), first averaged down in blocks
    towards ``keep`` (width, height) where the image is at least twice that: a 40 M pixel 16-bit scan
    then costs about 4 bytes a pixel at the peak, not 24 (float64 copies)."""
    lo, hi = _finite_range(a)
    if keep is not None and (f := min(a.shape[1] // keep[0], a.shape[0] // keep[1])) >= 2:
        h, w = a.shape[0] // f * f, a.shape[1] // f * f
        if a.dtype.kind == "f":
            a = np.nan_to_num(a, nan=0.0, posinf=0.0, neginf=0.0)
        a = a[:h, :w].reshape(h // f, f, w // f, f).mean(axis=(1, 3), dtype=np.float32)
    else:
        a = np.nan_to_num(a.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    if mode.startswith("I;16") or (mode == "I" and lo >= 0 and hi <= 65535):
        bits = min(16, max(8, int(np.ceil(np.log2(hi + 1))))) if hi > 0 else 8
        a *= 255.0 / (2**bits - 1)
    elif mode == "F" and lo >= 0 and hi <= 1:
        a *= 255.0
    elif not (mode == "F" and lo >= 0 and hi <= 255):
        a = (a - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(a)
    np.round(a, out=a)
    return np.clip(a, 0, 255, out=a).astype(np.uint8)


def _finite_range(a: np.ndarray) -> tuple[float, float]:
    """(min, max) of ``a`` with NaN and infinities counted as 0 (as they are drawn), without a float copy of
    an integer image."""
    if not a.size:
        return 0.0, 0.0
    if a.dtype.kind != "f":
        return float(a.min()), float(a.max())
    finite = np.isfinite(a)
    if not finite.any():
        return 0.0, 0.0
    lo, hi = float(a.min(where=finite, initial=np.inf)), float(a.max(where=finite, initial=-np.inf))
    return (min(lo, 0.0), max(hi, 0.0)) if not finite.all() else (lo, hi)
