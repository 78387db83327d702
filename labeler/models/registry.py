"""Trained model versions on disk, per project, with an atomic "serving" pointer.

Layout under ``MODEL_DIR``::

    projects/<project>/versions/<version>/meta.json   metrics, classes, sizes, time
    projects/<project>/versions/<version>/...         the classifier's own files
    projects/<project>/CURRENT                        name of the serving version

A version is written into a hidden temp folder, fsynced, and renamed into
place under a lock only when complete; ``CURRENT`` is replaced atomically: a
crash at any point leaves either the old or the new serving version, never a
half one, and two trainings finishing together get different names.
Project ids are digits and version names match :data:`VERSION_RE`, so no
name from the network can point outside ``MODEL_DIR``.

With ``LABELER_REGISTRY_URL`` set (``s3://bucket/prefix``), :func:`labeler.models.openregistry.open_registry`
returns an :class:`~labeler.models.objectregistry.ObjectRegistry`: the same
layout on object storage, shared by several backend replicas, with downloaded
versions cached under ``MODEL_DIR``.
"""

from __future__ import annotations

import builtins
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from filelock import FileLock

from labeler.errors import RegistryError
from labeler.fsutil import atomic_write_text, disk_full_says, fsync_dir, fsync_tree, remove_temp_files
from labeler.ids import PROJECT_RE, VERSION_RE, check_project, check_version  # noqa: F401 - imported from here too


def version_kind(meta: dict) -> str:
    """The kind part of a version name (``head``, ``cnn``) from the model's meta."""
    return re.sub(r"[^a-z0-9_]", "_", str(meta.get("kind", "model")).lower())[:32] or "model"


class Registry:
    """Model versions in a local folder (``MODEL_DIR``); one host, any number of processes."""

    def __init__(self, model_dir: str | Path, keep: int = 20) -> None:
        self.root = Path(model_dir) / "projects"
        self.keep = keep

    def _project(self, project: str) -> Path:
        return self.root / check_project(project)

    def project_dir(self, project: str, create: bool = False) -> Path:
        """The folder of ``project`` (validated; created on request)."""
        p = self._project(project)
        if create:
            p.mkdir(parents=True, exist_ok=True)
        return p

    def versions_dir(self, project: str) -> Path:
        return self._project(project) / "versions"

    def add(self, project: str, write: Callable[[Path], dict], prefix: str = "v") -> str:
        """Create a new version: ``write(folder)`` saves the model and returns its meta.

        Returns the version name (``v1``, ``v2``, ... per project). Nothing is
        visible until ``write`` has returned and the folder is renamed in place.
        """
        vdir = self.versions_dir(project)
        with disk_full_says(f"a new model version of project {project}", vdir):
            vdir.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(dir=vdir, prefix=".tmp-"))
            name = self._add(project, write, prefix, vdir, tmp)
        self.prune(project)
        return name

    def _add(self, project: str, write: Callable[[Path], dict], prefix: str, vdir: Path, tmp: Path) -> str:
        """:meth:`add` in the temp folder ``tmp``: removed on any failure, renamed into place on success."""
        try:
            meta = dict(write(tmp) or {})
            kind = version_kind(meta)
            with FileLock(vdir / ".lock"):  # claim the next number; other processes wait here
                number = 1 + max((int(m.group(1)) for p in vdir.iterdir()
                                  if (m := re.fullmatch(r"v(\d+)-.*", p.name))), default=0)
                name = check_version(f"{prefix}{number}-{kind}")
                meta.update(version=name, project=str(project), created=time.time())
                (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
                fsync_tree(tmp)
                os.rename(tmp, vdir / name)
                fsync_dir(vdir)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return name

    def prune(self, project: str) -> list[str]:
        """Delete the oldest versions beyond ``keep`` (never the serving one); returns their names."""
        serving = self.current(project)
        old = [m["version"] for m in self.list(project) if m["version"] != serving]
        gone = old[:max(0, len(old) - self.keep)]
        for name in gone:
            self._delete(project, name)
        return gone

    def _delete(self, project: str, name: str) -> None:
        shutil.rmtree(self.versions_dir(project) / name, ignore_errors=True)

    def list(self, project: str) -> builtins.list[dict]:
        """Meta of every complete version, oldest first."""
        vdir = self.versions_dir(project)
        if not vdir.exists():
            return []
        metas = []
        for p in vdir.iterdir():
            if not VERSION_RE.fullmatch(p.name) or not (p / "meta.json").exists():
                continue
            try:
                metas.append(json.loads((p / "meta.json").read_text()))
            except ValueError:
                continue
        return sorted(metas, key=lambda m: m.get("created", 0))

    def path(self, project: str, version: str) -> Path:
        p = self.versions_dir(project) / check_version(version)
        if not (p / "meta.json").exists():
            raise RegistryError(f"project {project} has no model version {version!r}")
        return p

    def meta(self, project: str, version: str) -> dict:
        return json.loads((self.path(project, version) / "meta.json").read_text())

    def current(self, project: str) -> str | None:
        """The serving version, or None when the zero-shot model serves."""
        try:
            name = (self._project(project) / "CURRENT").read_text().strip()
        except FileNotFoundError:
            return None
        return name if name and VERSION_RE.fullmatch(name) else None

    def promote(self, project: str, version: str | None) -> None:
        """Make ``version`` the serving one (None: back to zero-shot), atomically."""
        if version is not None:
            self.path(project, version)
        atomic_write_text(self._project(project) / "CURRENT", version or "")

    def temperature(self, project: str) -> float:
        """The zero-shot temperature fitted for ``project`` (1.0 until labels exist)."""
        try:
            return float(json.loads(self._read_text(project, "temperature.json"))["temperature"])
        except (FileNotFoundError, ValueError, KeyError):
            return 1.0

    def set_temperature(self, project: str, temperature: float, n_labels: int) -> None:
        self._write_text(project, "temperature.json",
                         json.dumps({"temperature": temperature, "n_labels": n_labels, "fitted": time.time()}))

    def thresholds(self, project: str, classes: builtins.list[str]) -> builtins.list[float]:
        """Multi-label zero-shot: per-class thresholds fitted for ``project`` (0.5 each until labels
        exist, or when they were fitted for other classes)."""
        try:
            saved = json.loads(self._read_text(project, "thresholds.json"))
            if saved["classes"] == list(classes):
                return [float(t) for t in saved["thresholds"]]
        except (FileNotFoundError, ValueError, KeyError, TypeError):
            pass
        return [0.5] * len(classes)

    def set_thresholds(self, project: str, classes: builtins.list[str], thresholds: builtins.list[float], n_labels: int) -> None:
        self._write_text(project, "thresholds.json", json.dumps(
            {"classes": list(classes), "thresholds": [float(t) for t in thresholds], "n_labels": n_labels,
             "fitted": time.time()}))

    def trained_at(self, project: str) -> int:
        """Label Studio's annotation count when ``LABELER_TRAIN_EVERY`` last started a training (0: never)."""
        try:
            return int(json.loads(self._read_text(project, "train_every.json"))["annotations"])
        except (FileNotFoundError, ValueError, KeyError, TypeError):
            return 0

    def set_trained_at(self, project: str, annotations: int) -> None:
        self._write_text(project, "train_every.json", json.dumps({"annotations": annotations, "at": time.time()}))

    def pretrain_failed(self, project: str) -> dict:
        """The failed self-supervised pretraining recorded for ``project`` (``tasks``, ``readable``,
        ``error``, ``at``; see :mod:`labeler.learning.pretraining`), or {} (none since the last success)."""
        try:
            saved = json.loads(self._read_text(project, "pretrain_failed.json"))
        except (FileNotFoundError, ValueError):
            return {}
        return saved if isinstance(saved, dict) and isinstance(saved.get("tasks"), int) else {}

    def set_pretrain_failed(self, project: str, record: dict) -> None:
        """Record a failed pretraining of ``project`` ({}: clear it)."""
        self._write_text(project, "pretrain_failed.json", json.dumps(record))

    # Small per-project files shared by every process (an object store overrides these two).
    def _read_text(self, project: str, name: str) -> str:
        return (self._project(project) / name).read_text()

    def _write_text(self, project: str, name: str, text: str) -> None:
        atomic_write_text(self._project(project) / name, text)

    def projects(self) -> builtins.list[str]:
        return self._local_projects()

    def _local_projects(self) -> builtins.list[str]:
        if not self.root.exists():
            return []
        return sorted((p.name for p in self.root.iterdir() if PROJECT_RE.fullmatch(p.name)), key=int)

    def find(self, version: str) -> tuple[str, Path]:
        """(project, folder) of ``version`` searched over all projects."""
        check_version(version)
        for project in self.projects():
            p = self.versions_dir(project) / version
            if (p / "meta.json").exists():
                return project, p
        raise RegistryError(f"no model version {version!r} under {self.root}")

    def cleanup(self) -> int:
        """Remove what interrupted writes left behind (temp version folders, temp files); returns the count."""
        n = 0
        for project in self._local_projects():
            pdir = self._project(project)
            n += remove_temp_files(pdir)
            vdir = pdir / "versions"
            if vdir.exists():
                for p in vdir.glob(".tmp-*"):
                    shutil.rmtree(p, ignore_errors=True)
                    n += 1
        return n
