"""Decoding image bytes safely: a bounded pixel count, fully loaded or a clear error.

Fetching (what may be fetched, and how much) lives in :mod:`labeler.media.fetching`.
"""

from __future__ import annotations

import io
import warnings

from PIL import Image, UnidentifiedImageError

from labeler.errors import ImageError  # noqa: F401 - raised here, imported from here

DEFAULT_MAX_PIXELS = 40_000_000  # ~ 6300 x 6300; a bigger classification image is an attack or a mistake


def decode(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode image bytes fully (truncated files fail here, not later in the model).

    The size in the header is checked before any pixel is decoded, so a
    small file that claims 20000 x 20000 pixels costs nothing.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
            width, height = im.size
            if width * height > max_pixels:
                raise ImageError(f"image of {width}x{height} pixels refused (limit {max_pixels} pixels)")
            im.load()
    except ImageError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError,
            Image.DecompressionBombWarning, MemoryError) as exc:
        raise ImageError(f"cannot decode image: {exc}") from None
    return im
