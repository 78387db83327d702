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

Entries are read without ``np.load``: the ``.npy`` header is parsed here
(only 2-D little-endian fp16 is accepted, so nothing can be unpickled) and the
data memory-mapped with ``np.memmap`` at the known offset, which is safe with
many concurrent readers (``np.load`` was seen failing under concurrent load on
CPython 3.11).

Optionally a :class:`~labeler.models.devicetier.DeviceTier` keeps the hidden states
of recently embedded images on the GPU (:meth:`EmbeddingCache.attach_tier`):
re-scoring them with new prompts reads no disk. Writes happen on background
threads; :meth:`EmbeddingCache.put_embeddings` copies a batch off the GPU into
pinned memory asynchronously, so the model does not wait for the copy either.

Beside the embeddings, :class:`LogitCache` memoises the ITM log-odds of each
(image, prompt) pair, so re-ranking, a new temperature or a changed prompt of
one class re-runs the Q-Former only for prompts it has not seen, and
:class:`PooledMemo` the pooled feature of each image (2.8 KB for the full
model): re-scoring known images with a new trained head opens no embedding
file at all.
"""

from __future__ import annotations

import os
import re
import sqlite3
import struct
import tempfile
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from labeler.errors import DiskFull
from labeler.fsutil import cache_transaction, disk_full_says, warn_disk_full
from labeler.media.images import content_key  # noqa: F401 - imported from here too

if TYPE_CHECKING:
    from labeler.models.devicetier import DeviceTier
    from labeler.models.zeroshot import ImageEmbeddings

_MAGIC = b"\x93NUMPY"
_HEADER = re.compile(r"^\{'descr': '<f2', 'fortran_order': False, 'shape': \((\d+), (\d+)\), \}\s*$")


def read_entry(path: str | Path) -> np.memmap:
    """A cache file as a read-only (L + 1, D) fp16 memory map.

    The header is parsed here rather than by ``np.load``: anything but the
    2-D ``<f2`` C-order arrays this cache writes raises ``ValueError``, and no
    state is shared between threads. Raises ``OSError`` for unreadable files.
    """
    with open(path, "rb") as f:
        head = f.read(10)
        if len(head) < 10 or head[:6] != _MAGIC:
            raise ValueError(f"{path}: not a .npy file")
        major = head[6]
        if major == 1:
            (hlen,), start = struct.unpack("<H", head[8:10]), 10
        elif major in (2, 3):
            (hlen,), start = struct.unpack("<I", head[8:10] + f.read(2)), 12
        else:
            raise ValueError(f"{path}: unknown .npy version {major}")
        header = f.read(hlen).decode("latin1")
    m = _HEADER.match(header)
    if m is None:
        raise ValueError(f"{path}: not a 2-D little-endian fp16 array: {header.strip()[:80]}")
    shape = (int(m.group(1)), int(m.group(2)))
    if os.path.getsize(path) != start + hlen + 2 * shape[0] * shape[1] or shape[0] < 2:
        raise ValueError(f"{path}: truncated or malformed entry")
    return np.memmap(path, dtype="<f2", mode="r", offset=start + hlen, shape=shape)


class EmbeddingCache:
    def __init__(self, root: str | Path, model_key: str, max_bytes: int = 20 * 2**30, writers: int = 4) -> None:
        self.dir = Path(root) / model_key
        self.dir.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._size: int | None = None
        # Several writers: one file write per image, 727 KB each for the full model.
        self._writer = ThreadPoolExecutor(max_workers=writers, thread_name_prefix="cache-writer")
        self._pending: list[Future] = []
        self.logits = LogitCache(self.dir / "logits.sqlite")
        self.pooled = PooledMemo(self.dir / "pooled.sqlite")
        self.tier: DeviceTier | None = None

    def attach_tier(self, tier: DeviceTier | None) -> None:
        """Keep hidden states on ``tier``'s device too: new embeddings and disk hits go there."""
        self.tier = tier

    def _path(self, key: str) -> Path:
        return self.dir / key[:2] / f"{key}.npy"

    def get(self, key: str) -> tuple[np.ndarray, np.ndarray] | None:
        """(hidden, pooled) for ``key`` from disk, or None on a miss or an unreadable entry.

        ``hidden`` is a read-only memory map: its bytes are read when used.
        """
        path = self._path(key)
        try:
            both = read_entry(path)
            pooled = np.array(both[-1], dtype=np.float32)
            os.utime(path)
        except (FileNotFoundError, OSError, ValueError):
            return None
        return both[:-1], pooled

    def get_many(self, keys: list[str], workers: int = 8) -> list[tuple[object, np.ndarray] | None]:
        """:meth:`get` for many keys; with a tier, its hits first and disk hits promoted into it.

        A hit's hidden states are a device tensor (tier) or a memory map (disk);
        disk reads run on a thread pool (file reads release the GIL).
        """
        out: list[tuple[object, np.ndarray] | None] = [None] * len(keys)
        rest = list(range(len(keys)))
        if self.tier is not None:
            hits = {i: row for i, k in enumerate(keys) if (row := self.tier.get(k)) is not None}
            if hits:
                import torch

                pooled = torch.stack([h[1] for h in hits.values()]).float().cpu().numpy()
                for j, (i, h) in enumerate(hits.items()):
                    out[i] = (h[0], pooled[j])
            rest = [i for i in rest if i not in hits]
        if len(rest) < 16:
            disk = [self.get(keys[i]) for i in rest]
        else:
            with ThreadPoolExecutor(max_workers=workers) as pool:
                disk = list(pool.map(self.get, [keys[i] for i in rest]))
        for i, hit in zip(rest, disk):
            out[i] = hit
        if self.tier is not None:
            self._promote(self.tier, keys, {i: hit for i, hit in zip(rest, disk) if hit is not None}, out)
        return out

    @staticmethod
    def _promote(tier: DeviceTier, keys: list[str], disk: dict[int, tuple[np.ndarray, np.ndarray]],
                 out: list[tuple[object, np.ndarray] | None]) -> None:
        """Put the disk hits ``disk`` (index -> entry) into the tier; ``out[i]`` takes the tier's copy.

        A row the tier does not keep (a zero budget, or evicted by the rest of
        its batch) stays the disk's memory map.
        """
        promote = list(disk)
        for start in range(0, len(promote), 256):  # bounded pinned buffers
            part = promote[start:start + 256]
            tier.put([keys[i] for i in part], [disk[i][0] for i in part], [disk[i][1] for i in part])
            for i in part:
                kept = tier.get(keys[i])
                if kept is not None:
                    out[i] = (kept[0], disk[i][1])

    def put(self, key: str, hidden: np.ndarray, pooled: np.ndarray) -> None:
        """Store one entry now (see :meth:`put_rows` for the batched, background path)."""
        self._write(key, np.concatenate([hidden, pooled[None, :]]).astype(np.float16))

    def put_rows(self, keys: list[str], rows: np.ndarray) -> None:
        """Queue ``rows[i]`` ((L + 1, D) fp16: hidden states + pooled row) under ``keys[i]``.

        Writes happen on background threads so the model never waits for the
        disk (727 KB an image for the full model); :meth:`flush` waits for them.
        """
        def write() -> None:
            for k, r in zip(keys, rows):
                self._write(k, r)

        self._submit(write)

    def put_embeddings(self, keys: list[str], emb: ImageEmbeddings) -> None:
        """Store a batch straight from the model: into the tier (on the device, no copy to the host)
        and, through an asynchronous copy to pinned memory, to disk in the background."""
        if self.tier is not None:
            self.tier.put(keys, emb.hidden, emb.pooled)
        rows, ready = emb.host_rows()

        def write() -> None:
            if ready is not None:
                ready.synchronize()
            arr = rows.numpy()
            for k, r in zip(keys, arr):
                self._write(k, r)

        self._submit(write)

    def _submit(self, job: Callable[[], None]) -> None:
        self._pending.append(self._writer.submit(job))
        self._pending = [f for f in self._pending if not f.done()]

    def flush(self) -> None:
        for fut in self._pending:
            fut.result()
        self._pending = []

    def _write(self, key: str, row: np.ndarray) -> None:
        """Atomically (temp file + rename): a crash never leaves a torn entry. A full disk skips the
        entry (its temp file removed, a warning logged): the cache saves work, it is never the answer."""
        path = self._path(key)
        try:
            with disk_full_says("the embedding cache", self.dir):
                path.parent.mkdir(exist_ok=True)
                fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
                try:
                    with os.fdopen(fd, "wb") as f:
                        np.save(f, row)
                    os.replace(tmp, path)
                except BaseException:
                    Path(tmp).unlink(missing_ok=True)
                    raise
        except DiskFull as exc:
            warn_disk_full(exc)
            return
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


class _SqliteMemo:
    """A key-value memo in SQLite (WAL: safe across worker processes), shared by both memos below."""

    _CHUNK = 400  # keys per query, under SQLite's bound-variable limit

    def __init__(self, path: str | Path, schema: str) -> None:
        self.path = Path(path)
        self._db = sqlite3.connect(str(path), timeout=30, check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(f"CREATE TABLE IF NOT EXISTS {schema} WITHOUT ROWID")

    def _select(self, sql: str, images: list[str], params: Sequence[object] = ()) -> list[tuple]:
        """Rows of ``sql`` (ending in ``image IN ({})``) for ``images``, queried in chunks."""
        out: list[tuple] = []
        with self._lock:
            for start in range(0, len(images), self._CHUNK):
                chunk = images[start:start + self._CHUNK]
                out += self._db.execute(sql.format(",".join("?" * len(chunk))), [*params, *chunk]).fetchall()
        return out

    def _write(self, sql: str, rows: list[tuple]) -> None:
        """One transaction; a full disk rolls it back and skips the rows (a warning logged)."""
        with self._lock:
            cache_transaction(self._db, lambda: self._db.executemany(sql, rows), "the score memo", self.path)


class LogitCache(_SqliteMemo):
    """ITM log-odds per (image content key, prompt).

    About 150 bytes a pair (50,000 images x 4 prompts = 30 MB), so it is not bounded.
    """

    def __init__(self, path: str | Path) -> None:
        super().__init__(path, "logits (image TEXT, prompt TEXT, logit REAL, PRIMARY KEY (image, prompt))")

    def get(self, keys: list[str], prompts: list[str]) -> np.ndarray:
        """(N, K) memoised logits; NaN where a pair is unknown."""
        out = np.full((len(keys), len(prompts)), np.nan, dtype=np.float32)
        rows: dict[str, list[int]] = {}
        for i, k in enumerate(keys):
            rows.setdefault(k, []).append(i)
        col = {p: j for j, p in enumerate(prompts)}
        unique = list(col)
        for start in range(0, len(unique), self._CHUNK):  # SQLite bounds the variables of one statement
            some = unique[start:start + self._CHUNK]
            sql = f"SELECT image, prompt, logit FROM logits WHERE prompt IN ({','.join('?' * len(some))}) AND image IN ({{}})"
            for image, prompt, logit in self._select(sql, list(rows), some):
                out[rows[image], col[prompt]] = logit
        return out

    def put(self, keys: list[str], prompts: list[str], logits: np.ndarray) -> None:
        """Store ``logits[i, j]`` for (``keys[i]``, ``prompts[j]``)."""
        rows = [(k, p, float(v)) for k, r in zip(keys, np.asarray(logits)) for p, v in zip(prompts, r)]
        self._write("INSERT OR REPLACE INTO logits VALUES (?, ?, ?)", rows)


class PooledMemo(_SqliteMemo):
    """The pooled image feature per image content key, fp16.

    ``D * 2`` bytes an image (2.8 KB for ``blip2-itm-vit-g``: 140 MB for 50,000 images), so it is not bounded.
    """

    def __init__(self, path: str | Path) -> None:
        super().__init__(path, "pooled (image TEXT PRIMARY KEY, vec BLOB)")

    def get(self, keys: list[str]) -> list[np.ndarray | None]:
        """float32 features in ``keys`` order; None where unknown."""
        found = {image: np.frombuffer(vec, dtype="<f2").astype(np.float32) for image, vec
                 in self._select("SELECT image, vec FROM pooled WHERE image IN ({})", list(dict.fromkeys(keys)))}
        return [found.get(k) for k in keys]

    def put(self, keys: list[str], features: np.ndarray) -> None:
        """Store ``features[i]`` (any float dtype, stored as fp16) under ``keys[i]``."""
        self._write("INSERT OR REPLACE INTO pooled VALUES (?, ?)",
                    [(k, np.asarray(f, dtype="<f2").tobytes()) for k, f in zip(keys, features)])
