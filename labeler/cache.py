"""Image embeddings on disk, keyed by image content and model.

One ``.npy`` file per (model, image), fp16, shape (L + 1, D): the vision
tower's last hidden state (L rows, what ITM re-scoring needs) and the pooled
feature for trained classifiers as the last row. A plain ``.npy`` loads in
tens of microseconds, an ``.npz`` (a zip) ten times slower. Footprint per
image: ``(L + 1) * D * 2`` bytes, i.e. 258*1408*2 = 727 KB for
``blip2-itm-vit-g`` at 224 px (50,000 images = 36 GB) and about 1 KB for the
tiny test model. The cache is
bounded by ``max_bytes``: when a write takes it over, the least recently used
files go first (reads refresh a file's mtime). Entries are read memory-mapped:
a caller that needs only the pooled row (a trained head) or nothing at all
(every prompt's logit already memoised) never reads the hidden states.

Beside the embeddings, :class:`LogitCache` memoises the ITM log-odds of each
(image, prompt) pair, so re-ranking, a new temperature or a changed prompt of
one class re-runs the Q-Former only for prompts it has not seen.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import tempfile
import threading
from concurrent.futures import Future, ThreadPoolExecutor
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
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cache-writer")
        self._pending: list[Future] = []
        self.logits = LogitCache(self.dir / "logits.sqlite")

    def _path(self, key: str) -> Path:
        return self.dir / key[:2] / f"{key}.npy"

    def get(self, key: str) -> tuple[np.ndarray, np.ndarray] | None:
        """(hidden, pooled) for ``key``, or None on a miss or an unreadable entry.

        ``hidden`` is a read-only memory map: its bytes are read when used.
        """
        path = self._path(key)
        try:
            both = np.load(path, mmap_mode="r")
            pooled = np.array(both[-1], dtype=np.float32)
            os.utime(path)
        except (FileNotFoundError, OSError, ValueError):
            return None
        return both[:-1], pooled

    def get_many(self, keys: list[str], workers: int = 8) -> list[tuple[np.ndarray, np.ndarray] | None]:
        """:meth:`get` for many keys on a thread pool (file reads release the GIL)."""
        if len(keys) < 16:
            return [self.get(k) for k in keys]
        with ThreadPoolExecutor(max_workers=workers) as pool:
            return list(pool.map(self.get, keys))

    def put(self, key: str, hidden: np.ndarray, pooled: np.ndarray) -> None:
        """Store one entry now (see :meth:`put_rows` for the batched, background path)."""
        self._write(key, np.concatenate([hidden, pooled[None, :]]).astype(np.float16))

    def put_rows(self, keys: list[str], rows: np.ndarray) -> None:
        """Queue ``rows[i]`` ((L + 1, D) fp16: hidden states + pooled row) under ``keys[i]``.

        Writes happen on a background thread so the model never waits for the
        disk (727 KB an image for the full model); :meth:`flush` waits for them.
        """
        self._pending.append(self._writer.submit(lambda: [self._write(k, r) for k, r in zip(keys, rows)]))
        self._pending = [f for f in self._pending if not f.done()]

    def flush(self) -> None:
        for fut in self._pending:
            fut.result()
        self._pending = []

    def _write(self, key: str, row: np.ndarray) -> None:
        """Atomically (temp file + rename): a crash never leaves a torn entry."""
        path = self._path(key)
        path.parent.mkdir(exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            np.save(f, row)
        os.replace(tmp, path)
        with self._lock:
            if self._size is None:
                self._size = self.size_bytes()
            else:
                self._size += path.stat().st_size
            if self._size > self.max_bytes:
                self._size = self._evict(int(self.max_bytes * 0.9))

    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.dir.glob("*/*.npy"))

    def _evict(self, target: int) -> int:
        files = sorted(((p.stat().st_mtime, p.stat().st_size, p) for p in self.dir.glob("*/*.npy")))
        total = sum(s for _, s, _ in files)
        for _, size, p in files:
            if total <= target:
                break
            p.unlink(missing_ok=True)
            total -= size
        return total

    def __len__(self) -> int:
        return sum(1 for _ in self.dir.glob("*/*.npy"))


class LogitCache:
    """ITM log-odds per (image content key, prompt), in SQLite (WAL: safe across worker processes).

    About 150 bytes a pair (50,000 images x 4 prompts = 30 MB), so it is not bounded.
    """

    _CHUNK = 400  # keys per query, under SQLite's bound-variable limit

    def __init__(self, path: str | Path) -> None:
        self._db = sqlite3.connect(str(path), timeout=30, check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("CREATE TABLE IF NOT EXISTS logits (image TEXT, prompt TEXT, logit REAL, "
                             "PRIMARY KEY (image, prompt)) WITHOUT ROWID")

    def get(self, keys: list[str], prompts: list[str]) -> np.ndarray:
        """(N, K) memoised logits; NaN where a pair is unknown."""
        out = np.full((len(keys), len(prompts)), np.nan, dtype=np.float32)
        rows: dict[str, list[int]] = {}
        for i, k in enumerate(keys):
            rows.setdefault(k, []).append(i)
        col = {p: j for j, p in enumerate(prompts)}
        marks = ",".join("?" * len(prompts))
        images = list(rows)
        with self._lock:
            for start in range(0, len(images), self._CHUNK):
                chunk = images[start:start + self._CHUNK]
                sql = (f"SELECT image, prompt, logit FROM logits WHERE prompt IN ({marks}) "
                       f"AND image IN ({','.join('?' * len(chunk))})")
                for image, prompt, logit in self._db.execute(sql, [*prompts, *chunk]):
                    out[rows[image], col[prompt]] = logit
        return out

    def put(self, keys: list[str], prompts: list[str], logits: np.ndarray) -> None:
        """Store ``logits[i, j]`` for (``keys[i]``, ``prompts[j]``)."""
        rows = [(k, p, float(v)) for k, r in zip(keys, np.asarray(logits)) for p, v in zip(prompts, r)]
        with self._lock:
            self._db.execute("BEGIN")
            self._db.executemany("INSERT OR REPLACE INTO logits VALUES (?, ?, ?)", rows)
            self._db.execute("COMMIT")
