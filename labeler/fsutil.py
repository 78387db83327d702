"""Crash-safe file writes: write a temp file, fsync it, rename it into place, fsync the folder.

The one home of atomic writes (registry pointers, job state, version metadata), and of what a full
disk means (:func:`is_disk_full`, :func:`disk_full_says`).
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import sqlite3
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from labeler.errors import DiskFull

log = logging.getLogger(__name__)
_NO_SPACE = {errno.ENOSPC, errno.EDQUOT}
_last_warning = [0.0]


def is_disk_full(exc: BaseException) -> bool:
    """True for a write that ran out of space or quota (an OSError, or SQLite's "disk is full")."""
    if isinstance(exc, OSError):
        return isinstance(exc, DiskFull) or exc.errno in _NO_SPACE
    return isinstance(exc, sqlite3.OperationalError) and "disk is full" in str(exc)


def _free(where: Path) -> str:
    for p in (where, *where.parents):
        try:
            return f"{shutil.disk_usage(p).free / 2**20:.1f} MiB free"
        except OSError:
            continue
    return "free space unknown"


@contextmanager
def disk_full_says(what: str, where: str | Path) -> Iterator[None]:
    """Raise a write that ran out of space as :class:`DiskFull`: "disk full: <what> could not be
    written to <where> (N MiB free)". The caller removes its partial files (its own ``except``/``finally``)."""
    try:
        yield
    except DiskFull:
        raise
    except (OSError, sqlite3.OperationalError) as exc:
        if not is_disk_full(exc):
            raise
        raise DiskFull(f"disk full: {what} could not be written to {where} ({_free(Path(where))})") from exc


def fsync_dir(folder: str | Path) -> None:
    """Make a rename inside ``folder`` durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(folder: str | Path) -> None:
    """fsync every file under ``folder`` and the folders themselves (before renaming it into place)."""
    for root, _, files in os.walk(folder):
        for name in files:
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(root)


def warn_disk_full(exc: DiskFull, every_s: float = 60.0) -> None:
    """Log a skipped cache write, at most once per ``every_s`` (a full disk fails every write)."""
    if time.monotonic() - _last_warning[0] >= every_s:
        _last_warning[0] = time.monotonic()
        log.warning("%s; predictions go on without caching until there is room", exc)


def cache_transaction(db: sqlite3.Connection, work: Callable[[], object], what: str, where: str | Path) -> bool:
    """``work`` in one transaction of ``db`` (opened with ``isolation_level=None``). A full disk rolls it
    back, logs (:func:`warn_disk_full`) and returns False: a cache skips what it cannot store."""
    try:
        with disk_full_says(what, where):
            db.execute("BEGIN")
            work()
            db.execute("COMMIT")
        return True
    except DiskFull as exc:
        if db.in_transaction:
            db.execute("ROLLBACK")
        warn_disk_full(exc)
        return False


def atomic_write_text(path: str | Path, text: str) -> None:
    """Replace ``path`` with ``text`` so that readers see the old or the new content, never a mix."""
    path = Path(path)
    with disk_full_says(path.name, path.parent):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.tmp-")
        try:
            with os.fdopen(fd, "w") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        fsync_dir(path.parent)


def remove_temp_files(folder: str | Path) -> int:
    """Delete leftovers of interrupted atomic writes (``.name.tmp-*``) in ``folder``; returns how many."""
    n = 0
    for p in Path(folder).glob(".*.tmp-*"):
        if p.is_file():
            p.unlink(missing_ok=True)
            n += 1
    return n
