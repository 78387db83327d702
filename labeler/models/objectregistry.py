"""Model versions on object storage (an fsspec URL such as ``s3://bucket/prefix``), shared by replicas.

Layout under the URL (that of :mod:`labeler.models.registry`, plus claims)::

    projects/<project>/claims/<number>                one object per version number, created exclusively
    projects/<project>/versions/<version>/...         the classifier's files, uploaded first
    projects/<project>/versions/<version>/meta.json   uploaded last: the version exists once this does
    projects/<project>/CURRENT                        name of the serving version (one object write)
    projects/<project>/temperature.json

Why no lock is needed: a version number is claimed with a conditional put
(S3 ``If-None-Match: *``, fsspec ``mode="create"``) that exactly one of several
writers wins; the others take the next number. A version is listed only once
its meta.json is there, and that is uploaded after its files, so an upload cut
short by a crash is never seen (``cleanup`` removes it later). ``CURRENT`` is
one PUT, which S3 applies whole. Versions never change once written, so the
download cache (``MODEL_DIR/registry-cache/<url hash>/<project>/versions``,
filled through a temp folder + rename like a local registry) never goes stale.
Per-process state (job state, locks, queues) stays under ``MODEL_DIR/projects``.

Exclusive creation is atomic on S3 (and S3-compatible stores that honour
``If-None-Match: *``); for other fsspec stores it is only as strong as their
``pipe_file(mode="create")``.
"""

from __future__ import annotations

import builtins
import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from labeler.errors import RegistryError, RegistryStoreError
from labeler.fsutil import disk_full_says, fsync_tree
from labeler.ids import PROJECT_RE, VERSION_RE, check_project, check_version
from labeler.models.registry import Registry, version_kind

log = logging.getLogger(__name__)
ORPHAN_AGE_S = 3600.0  # an upload without meta.json this old was cut short (uploads take seconds)


@contextlib.contextmanager
def _store_errors(url: str) -> Iterator[None]:
    """Store outages as RegistryStoreError; 'not found' and 'exists' pass through for the callers to decide."""
    try:
        yield
    except (FileNotFoundError, FileExistsError):
        raise
    except OSError as exc:
        raise RegistryStoreError(f"model registry store {url} failed: {exc}") from exc


def _name(key: str) -> str:
    return key.rstrip("/").rsplit("/", 1)[-1]


class ObjectRegistry(Registry):
    """The :class:`Registry` API on an fsspec store; ``model_dir`` keeps local state and the download cache."""

    current_ttl_s = 1.0  # CURRENT is read on every predict request: at most one GET a second per project

    def __init__(self, model_dir: str | Path, url: str, keep: int = 20, storage_options: dict | None = None) -> None:
        super().__init__(model_dir, keep)
        try:
            import fsspec

            self.fs, base = fsspec.core.url_to_fs(url, use_listings_cache=False, **(storage_options or {}))
        except (ImportError, ValueError) as exc:
            raise RegistryStoreError(f"cannot open the model registry at {url!r}: {exc} "
                                     "(object storage needs: pip install 'labeler[cloud]')") from exc
        self.url = url
        self.base = base.rstrip("/")
        self.cache = Path(model_dir) / "registry-cache" / hashlib.sha1(url.encode()).hexdigest()[:12]
        self._current: dict[str, tuple[float, str | None]] = {}
        self._metas: dict[tuple[str, str], dict] = {}

    def _key(self, project: str, *parts: str) -> str:
        return "/".join([self.base, "projects", check_project(project), *parts])

    def versions_dir(self, project: str) -> Path:
        """The local download cache of ``project``'s versions."""
        return self.cache / check_project(project) / "versions"

    # -- writing ----------------------------------------------------------------------
    def add(self, project: str, write: Callable[[Path], dict], prefix: str = "v") -> str:
        """Write the version locally, claim a number, upload its files and then its meta.json: a failed or
        cut-short upload is never listed (no meta.json), and its local copy is removed."""
        vdir = self.versions_dir(project)
        with disk_full_says(f"a new model version of project {project}", vdir):
            vdir.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(dir=vdir, prefix=".tmp-"))
        try:
            meta = dict(write(tmp) or {})
            name = self._claim(project, prefix, version_kind(meta))
            meta.update(version=name, project=str(project), created=time.time())
            (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
            with _store_errors(self.url):
                self._upload(tmp, self._key(project, "versions", name))
            shutil.rmtree(vdir / name, ignore_errors=True)  # a stale cache entry (the store was emptied)
            os.rename(tmp, vdir / name)  # what was uploaded is this replica's cached copy
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self.prune(project)
        return name

    def _numbers(self, project: str) -> builtins.list[int]:
        """Version numbers claimed or present (versions copied in without claims count too)."""
        numbers = []
        for folder, pattern in (("claims", r"(\d+)"), ("versions", r"v(\d+)-.*")):
            try:
                with _store_errors(self.url):
                    keys = self.fs.ls(self._key(project, folder), detail=False)
            except FileNotFoundError:
                continue
            numbers += [int(m.group(1)) for k in keys if (m := re.fullmatch(pattern, _name(k)))]
        return numbers

    def _claim(self, project: str, prefix: str, kind: str) -> str:
        """The next free version number, created exclusively: concurrent writers get different ones."""
        number = 1 + max(self._numbers(project), default=0)
        for _ in range(1000):
            name = check_version(f"{prefix}{number}-{kind}")
            try:
                with _store_errors(self.url):
                    self.fs.pipe_file(self._key(project, "claims", str(number)), name.encode(), mode="create")
                return name
            except FileExistsError:
                number += 1
        raise RegistryStoreError(f"could not claim a version number for project {project} at {self.url}")

    def _upload(self, folder: Path, remote: str) -> None:
        """Every file of ``folder`` under ``remote``; meta.json last, since it marks the version complete."""
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            if path != folder / "meta.json":
                self.fs.put_file(str(path), f"{remote}/{path.relative_to(folder).as_posix()}")
        self.fs.put_file(str(folder / "meta.json"), f"{remote}/meta.json")

    def _delete(self, project: str, name: str) -> None:
        remote = self._key(project, "versions", name)
        with _store_errors(self.url), contextlib.suppress(FileNotFoundError):
            self.fs.rm_file(f"{remote}/meta.json")  # invisible first, then the files
            self.fs.rm(remote, recursive=True)
        shutil.rmtree(self.versions_dir(project) / name, ignore_errors=True)

    def promote(self, project: str, version: str | None) -> None:
        if version is not None and not self._exists(project, check_version(version)):
            raise RegistryError(f"project {project} has no model version {version!r}")
        with _store_errors(self.url):
            self.fs.pipe_file(self._key(project, "CURRENT"), (version or "").encode())
        self._current[check_project(project)] = (time.monotonic(), version)

    def _write_text(self, project: str, name: str, text: str) -> None:
        with _store_errors(self.url):
            self.fs.pipe_file(self._key(project, name), text.encode())

    # -- reading ----------------------------------------------------------------------
    def _exists(self, project: str, version: str) -> bool:
        with _store_errors(self.url):
            return self.fs.exists(self._key(project, "versions", version, "meta.json"))

    def list(self, project: str) -> builtins.list[dict]:
        with _store_errors(self.url):
            try:
                keys = self.fs.glob(self._key(project, "versions", "*", "meta.json"))
            except FileNotFoundError:
                return []
            blobs = self.fs.cat(keys, on_error="omit") if keys else {}
        metas = []
        for key, blob in blobs.items():
            if not VERSION_RE.fullmatch(key.rsplit("/", 2)[-2]):
                continue
            try:
                metas.append(json.loads(blob))
            except ValueError:
                continue
        return sorted(metas, key=lambda m: m.get("created", 0))

    def path(self, project: str, version: str) -> Path:
        """A local folder holding ``version`` (downloaded once, then served from the cache)."""
        local = self.versions_dir(project) / check_version(version)
        if (local / "meta.json").exists():
            return local
        if not self._exists(project, version):
            raise RegistryError(f"project {project} has no model version {version!r}")
        with _store_errors(self.url):
            self._download(self._key(project, "versions", version), local)
        return local

    def _download(self, remote: str, local: Path) -> None:
        local.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=local.parent, prefix=".tmp-"))
        try:
            for key in self.fs.find(remote):
                rel = key[len(remote) + 1:]
                if not key.startswith(remote + "/") or ".." in rel.split("/"):
                    continue
                (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
                self.fs.get_file(key, str(tmp / rel))
            fsync_tree(tmp)
            try:
                os.rename(tmp, local)
            except OSError:
                if not (local / "meta.json").exists():  # else: another process downloaded it first
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def meta(self, project: str, version: str) -> dict:
        key = (check_project(project), check_version(version))
        if key not in self._metas:  # versions never change: one read each
            local = self.versions_dir(project) / version / "meta.json"
            try:
                with _store_errors(self.url):
                    blob = local.read_bytes() if local.exists() else \
                        self.fs.cat_file(self._key(project, "versions", version, "meta.json"))
            except FileNotFoundError:
                raise RegistryError(f"project {project} has no model version {version!r}") from None
            self._metas[key] = json.loads(blob)
        return dict(self._metas[key])

    def current(self, project: str) -> str | None:
        key = check_project(project)
        hit = self._current.get(key)
        if hit is not None and time.monotonic() - hit[0] < self.current_ttl_s:
            return hit[1]
        try:
            with _store_errors(self.url):
                name = self.fs.cat_file(self._key(project, "CURRENT")).decode().strip()
        except FileNotFoundError:
            name = ""
        except RegistryStoreError as exc:
            if hit is None:
                raise
            # the store is down or slow: keep serving what served (asked again after the next TTL)
            log.warning("project %s: %s; serving %s, the last version read", project, exc, hit[1] or "zero-shot")
            self._current[key] = (time.monotonic(), hit[1])
            return hit[1]
        value = name if VERSION_RE.fullmatch(name) else None
        self._current[key] = (time.monotonic(), value)
        return value

    def _read_text(self, project: str, name: str) -> str:
        with _store_errors(self.url):
            return self.fs.cat_file(self._key(project, name)).decode()

    def projects(self) -> builtins.list[str]:
        try:
            with _store_errors(self.url):
                keys = self.fs.ls(f"{self.base}/projects", detail=False)
        except FileNotFoundError:
            return []
        return sorted({_name(k) for k in keys if PROJECT_RE.fullmatch(_name(k))}, key=int)

    def find(self, version: str) -> tuple[str, Path]:
        check_version(version)
        for project in self.projects():
            if self._exists(project, version):
                return project, self.path(project, version)
        raise RegistryError(f"no model version {version!r} under {self.url}")

    # -- repair -----------------------------------------------------------------------
    def cleanup(self) -> int:
        """Local leftovers, plus uploads without meta.json older than an hour (cut short by a crash)."""
        n = super().cleanup()
        for tmp in self.cache.glob("*/versions/.tmp-*"):
            shutil.rmtree(tmp, ignore_errors=True)
            n += 1
        for project in self.projects():
            n += self._remove_orphans(project, time.time() - ORPHAN_AGE_S)
        return n

    def _remove_orphans(self, project: str, before: float) -> int:
        n = 0
        with _store_errors(self.url):
            try:
                folders = self.fs.ls(self._key(project, "versions"), detail=False)
            except FileNotFoundError:
                return 0
            for folder in folders:
                if self.fs.exists(f"{folder}/meta.json"):
                    continue
                files = self.fs.find(folder)
                if all(self.fs.modified(f).timestamp() < before for f in files):
                    self.fs.rm(folder, recursive=True)
                    n += 1
        return n
