"""Moved to :mod:`labeler.models.objectregistry` (issue #24); the name stays importable from here."""

from labeler.models.objectregistry import ObjectRegistry  # noqa: F401
