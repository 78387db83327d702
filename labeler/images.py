"""Fetching and decoding task images the ways Label Studio hands them out.

- inline ``data:image/png;base64,...`` URLs;
- ``/data/upload/...`` and ``/data/local-files/?d=...`` relative to the Label
  Studio host (joined to ``hostname``, with the API token: 401 without);
- absolute ``http(s)://`` URLs (the token is sent only to the Label Studio host);
- plain local paths and ``file://`` URLs (CLI use on a folder of images).
"""

from __future__ import annotations

import base64
import binascii
import io
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import unquote, urljoin, urlparse

import requests
from PIL import Image, UnidentifiedImageError

log = logging.getLogger(__name__)


class ImageError(Exception):
    """An image could not be fetched or decoded; the message says why."""


def resolve_url(url: str, hostname: str | None) -> str:
    """Absolute URL for ``url``; relative ``/data/...`` paths are joined to ``hostname``."""
    if url.startswith("/") and not Path(url).exists():
        if not hostname:
            raise ImageError(f"relative image URL {url!r} but no Label Studio host is known")
        return urljoin(hostname.rstrip("/") + "/", url.lstrip("/"))
    return url


def _same_host(a: str, b: str | None) -> bool:
    return bool(b) and urlparse(a).netloc == urlparse(b).netloc


def fetch_bytes(url: str, hostname: str | None = None, headers: dict[str, str] | None = None,
                session: requests.Session | None = None, timeout: float = 30.0) -> bytes:
    """Raw bytes of the image at ``url``; raises :class:`ImageError` with the reason."""
    if not isinstance(url, str) or not url:
        raise ImageError(f"task has no image URL (got {url!r})")
    if url.startswith("data:"):
        try:
            meta, _, payload = url.partition(",")
            return base64.b64decode(payload) if ";base64" in meta else unquote(payload).encode("latin-1")
        except (binascii.Error, ValueError) as exc:
            raise ImageError(f"bad data: URL: {exc}") from exc
    if url.startswith("file://"):
        url = unquote(urlparse(url).path)
    if "://" not in url and Path(url).exists():
        return Path(url).read_bytes()
    full = resolve_url(url, hostname)
    http = session or requests
    try:
        resp = http.get(full, headers=headers if _same_host(full, hostname) else None, timeout=timeout)
    except requests.RequestException as exc:
        raise ImageError(f"cannot download {full}: {exc}") from exc
    if resp.status_code != 200:
        raise ImageError(f"cannot download {full}: HTTP {resp.status_code}")
    return resp.content


def decode(data: bytes) -> Image.Image:
    """Decode image bytes fully (truncated files fail here, not later in the model)."""
    try:
        im = Image.open(io.BytesIO(data))
        im.load()
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise ImageError(f"cannot decode image: {exc}") from exc
    return im


def fetch_many(urls: Sequence[str], fetch: Callable[[str], bytes], workers: int = 8,
               ) -> list[bytes | ImageError]:
    """``fetch`` every URL concurrently; each slot holds the bytes or the error."""
    def one(url: str) -> bytes | ImageError:
        try:
            return fetch(url)
        except ImageError as exc:
            return exc
    if len(urls) <= 1:
        return [one(u) for u in urls]
    with ThreadPoolExecutor(max_workers=min(workers, len(urls))) as pool:
        return list(pool.map(one, urls))
