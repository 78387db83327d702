"""Trained model versions on disk, per project, with an atomic "serving" pointer.

Layout under ``MODEL_DIR``::

    projects/<project>/versions/<version>/meta.json   metrics, classes, sizes, time
    projects/<project>/versions/<version>/...         the classifier's own files
    projects/<project>/CURRENT                        name of the serving version

A version is written into a hidden temp folder and renamed into place only when
complete, and ``CURRENT`` is replaced with ``os.replace``: a crash at any point
leaves either the old or the new serving version, never a half one.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path


class RegistryError(Exception):
    pass


class Registry:
    def __init__(self, model_dir: str | Path) -> None:
        self.root = Path(model_dir) / "projects"

    def _project(self, project: str) -> Path:
        return self.root / str(project)

    def versions_dir(self, project: str) -> Path:
        return self._project(project) / "versions"

    def add(self, project: str, write: Callable[[Path], dict], prefix: str = "v") -> str:
        """Create a new version: ``write(folder)`` saves the model and returns its meta.

        Returns the version name (``v1``, ``v2``, ... per project). Nothing is
        visible until ``write`` has returned and the folder is renamed in place.
        """
        vdir = self.versions_dir(project)
        vdir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=vdir, prefix=".tmp-"))
        try:
            meta = dict(write(tmp) or {})
            number = 1 + max((int(p.name.split("-")[0][1:]) for p in vdir.iterdir()
                              if p.name[:1] == "v" and p.name.split("-")[0][1:].isdigit()), default=0)
            kind = meta.get("kind", "model")
            name = f"{prefix}{number}-{kind}"
            meta.update(version=name, project=str(project), created=time.time())
            (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
            os.rename(tmp, vdir / name)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return name

    def list(self, project: str) -> list[dict]:
        """Meta of every complete version, oldest first."""
        vdir = self.versions_dir(project)
        if not vdir.exists():
            return []
        metas = []
        for p in vdir.iterdir():
            if p.name.startswith(".") or not (p / "meta.json").exists():
                continue
            metas.append(json.loads((p / "meta.json").read_text()))
        return sorted(metas, key=lambda m: m["created"])

    def path(self, project: str, version: str) -> Path:
        p = self.versions_dir(project) / version
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
        return name or None

    def promote(self, project: str, version: str | None) -> None:
        """Make ``version`` the serving one (None: back to zero-shot), atomically."""
        if version is not None:
            self.path(project, version)
        pdir = self._project(project)
        pdir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=pdir, prefix=".CURRENT-")
        with os.fdopen(fd, "w") as f:
            f.write(version or "")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, pdir / "CURRENT")

    def temperature(self, project: str) -> float:
        """The zero-shot temperature fitted for ``project`` (1.0 until labels exist)."""
        try:
            return float(json.loads((self._project(project) / "temperature.json").read_text())["temperature"])
        except (FileNotFoundError, ValueError, KeyError):
            return 1.0

    def set_temperature(self, project: str, temperature: float, n_labels: int) -> None:
        pdir = self._project(project)
        pdir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=pdir, prefix=".temperature-")
        with os.fdopen(fd, "w") as f:
            json.dump({"temperature": temperature, "n_labels": n_labels, "fitted": time.time()}, f)
        os.replace(tmp, pdir / "temperature.json")

    def projects(self) -> list[str]:
        return sorted(p.name for p in self.root.iterdir()) if self.root.exists() else []

    def find(self, version: str) -> tuple[str, Path]:
        """(project, folder) of ``version`` searched over all projects."""
        for project in self.projects():
            p = self.versions_dir(project) / version
            if (p / "meta.json").exists():
                return project, p
        raise RegistryError(f"no model version {version!r} under {self.root}")
