"""Image embeddings on disk, keyed by image content and model.

One ``.npz`` file per (model, image): ``hidden`` (the vision tower's last
hidden state, fp16, what ITM re-scoring needs) and ``pooled`` (fp32, the
feature for trained classifiers). Footprint per image: ``(L*D*2 + D*4)``
bytes, i.e. 257*1408*2 + 1408*4 = 729 KB for ``blip2-itm-vit-g`` at 224 px
(50,000 images = 36 GB) and a few KB for the tiny test model. The cache is
bounded by ``max_bytes``: when a write takes it over, the least recently used
files go first (reads refresh a file's mtime).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
from pathlib import Path

import numpy as np


def content_key(data: bytes) -> str:
    """SHA-256 of the image bytes: the same picture under any URL hits the same entry."""
    return hashlib.sha256(data).hexdigest()


class EmbeddingCache:
    def __init__(self, root: str | Path, model_key: str, max_bytes: int = 20 * 2**30) -> None:
        self.dir = Path(root) / model_key
        self.dir.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._size: int | None = None

    def _path(self, key: str) -> Path:
        return self.dir / key[:2] / f"{key}.npz"

    def get(self, key: str) -> tuple[np.ndarray, np.ndarray] | None:
        """(hidden, pooled) for ``key``, or None on a miss or an unreadable entry."""
        path = self._path(key)
        try:
            with np.load(path) as z:
                hidden, pooled = z["hidden"], z["pooled"]
            os.utime(path)
            return hidden, pooled
        except (FileNotFoundError, OSError, KeyError, ValueError):
            return None

    def put(self, key: str, hidden: np.ndarray, pooled: np.ndarray) -> None:
        """Store atomically (temp file + rename): a crash never leaves a torn entry."""
        path = self._path(key)
        path.parent.mkdir(exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            np.savez(f, hidden=hidden.astype(np.float16), pooled=pooled.astype(np.float32))
        os.replace(tmp, path)
        with self._lock:
            if self._size is None:
                self._size = self.size_bytes()
            else:
                self._size += path.stat().st_size
            if self._size > self.max_bytes:
                self._size = self._evict(int(self.max_bytes * 0.9))

    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.dir.glob("*/*.npz"))

    def _evict(self, target: int) -> int:
        files = sorted(((p.stat().st_mtime, p.stat().st_size, p) for p in self.dir.glob("*/*.npz")))
        total = sum(s for _, s, _ in files)
        for _, size, p in files:
            if total <= target:
                break
            p.unlink(missing_ok=True)
            total -= size
        return total

    def __len__(self) -> int:
        return sum(1 for _ in self.dir.glob("*/*.npz"))
