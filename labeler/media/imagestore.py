"""Task image bytes kept locally, by reference, so a known image is not downloaded again.

Two SQLite tables under ``MODEL_DIR/cache/images.sqlite``: ``refs`` maps a
task's image reference (within its Label Studio's scope) to the SHA-256 of the
bytes it gave, and ``blobs`` holds those bytes once per content, bounded by
``LABELER_IMAGE_CACHE_MB`` (least recently used evicted).

When a reference may be reused:

- Label Studio uploads (``/data/upload/...``) are immutable by path: always;
- anything else fetched over http(s) (Label Studio's local-files URLs, allowed
  image hosts): for ``ttl_s`` after it was fetched (a short TTL rather than
  ETag revalidation: a conditional request would still cost the round trip
  that this store exists to avoid);
- ``data:`` URLs and local files are never stored (they cost no download).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from urllib.parse import urlsplit

from labeler.connection import Connection
from labeler.fsutil import cache_transaction
from labeler.media.images import content_key


class ImageStore:
    def __init__(self, path: str | Path, max_bytes: int, ttl_s: float = 600.0) -> None:
        self.path = path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self.ttl_s = ttl_s
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS refs (scope TEXT, ref TEXT, key TEXT, immutable INTEGER, "
                         "fetched REAL, PRIMARY KEY (scope, ref))")
        self._db.execute("CREATE TABLE IF NOT EXISTS blobs (key TEXT PRIMARY KEY, data BLOB, size INTEGER, "
                         "used REAL)")
        self._db.execute("CREATE INDEX IF NOT EXISTS blobs_used ON blobs (used)")
        self._size = self._db.execute("SELECT COALESCE(SUM(size), 0) FROM blobs").fetchone()[0]

    @staticmethod
    def _scope(conn: Connection, ref: object) -> tuple[str, bool] | None:
        """(scope, immutable) of a reference worth storing, or None."""
        if not isinstance(ref, str) or ref.startswith("data:") or len(ref) > 4096:
            return None
        try:
            parts = urlsplit(ref)
        except ValueError:  # malformed: the fetch reports it
            return None
        if parts.scheme in {"http", "https"}:
            on_studio = conn.origin is not None and f"{parts.scheme}://{parts.netloc}".lower() == conn.origin
            return "", on_studio and parts.path.startswith(conn.path_prefix + "/data/upload/")
        if not parts.scheme and ref.startswith("/data/") and conn.base_url:
            return conn.base_url, ref.startswith("/data/upload/")
        return None

    def get_many(self, conn: Connection, refs: Sequence[object]) -> list[bytes | None]:
        """The stored bytes of each reference that may be reused, else None."""
        out: list[bytes | None] = [None] * len(refs)
        now = time.time()
        used: list[tuple[float, str]] = []
        with self._lock:
            for i, ref in enumerate(refs):
                scope = self._scope(conn, ref)
                if scope is None:
                    continue
                row = self._db.execute(
                    "SELECT b.data, r.immutable, r.fetched, b.key FROM refs r JOIN blobs b ON b.key = r.key "
                    "WHERE r.scope = ? AND r.ref = ?", (scope[0], ref)).fetchone()
                if row and (row[1] or now - row[2] < self.ttl_s):
                    out[i] = row[0]
                    used.append((now, row[3]))
            if used:  # one transaction for every hit, not one per image
                self._write(lambda: self._db.executemany("UPDATE blobs SET used = ? WHERE key = ?", used))
        return out

    def _write(self, work: Callable[[], object]) -> bool:
        """``work`` in one transaction (the lock held); False when a full disk rolled it back: the store
        saves downloads, it is never the answer."""
        return cache_transaction(self._db, work, "the image cache", self.path)

    def put_many(self, conn: Connection, items: Sequence[tuple[object, bytes]]) -> None:
        """Remember what each reference gave."""
        now = time.time()

        def insert() -> None:
            for ref, data in items:
                scope = self._scope(conn, ref)
                if scope is None or len(data) > self.max_bytes:
                    continue
                key = content_key(data)
                added = self._db.execute("INSERT OR IGNORE INTO blobs VALUES (?, ?, ?, ?)",
                                         (key, data, len(data), now)).rowcount
                self._size += len(data) if added else 0
                self._db.execute("INSERT OR REPLACE INTO refs VALUES (?, ?, ?, ?, ?)",
                                 (scope[0], ref, key, int(scope[1]), now))

        with self._lock:
            size = self._size
            if not self._write(insert):
                self._size = size  # rolled back
            elif self._size > self.max_bytes:
                self._evict()

    def _evict(self) -> None:
        """Drop least recently used blobs down to 90 % of the bound (their refs go with them)."""
        target, size = int(self.max_bytes * 0.9), self._size

        def delete() -> None:
            for key, blob in self._db.execute("SELECT key, size FROM blobs ORDER BY used").fetchall():
                if self._size <= target:
                    break
                self._db.execute("DELETE FROM blobs WHERE key = ?", (key,))
                self._db.execute("DELETE FROM refs WHERE key = ?", (key,))
                self._size -= blob

        if not self._write(delete):
            self._size = size

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM refs").fetchone()[0]
