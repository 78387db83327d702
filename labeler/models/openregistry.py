"""The registry the settings name: model versions under ``MODEL_DIR``, or on object storage
(``LABELER_REGISTRY_URL``). Apart from :mod:`labeler.models.registry` so that the local registry and
:class:`~labeler.models.objectregistry.ObjectRegistry`, its subclass, do not import each other.
"""

from __future__ import annotations

from pathlib import Path

from labeler.config import Settings
from labeler.models.objectregistry import ObjectRegistry
from labeler.models.registry import Registry


def open_registry(model_dir: str | Path, url: str | None = None, keep: int = 20,
                  storage_options: dict | None = None) -> "Registry":
    """The registry under ``model_dir``, or on the fsspec store at ``url`` (local state stays in ``model_dir``)."""
    if not url:
        return Registry(model_dir, keep=keep)
    return ObjectRegistry(model_dir, url, keep=keep, storage_options=storage_options)


def registry_for(settings: "Settings") -> "Registry":
    """The registry ``settings`` name: LABELER_REGISTRY_URL if set, else MODEL_DIR."""
    return open_registry(settings.model_dir, settings.registry_url, keep=settings.keep_versions)
