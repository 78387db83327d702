"""Moved: model versions are :mod:`labeler.models.registry` (opened by :mod:`labeler.models.openregistry`),
ids and version names :mod:`labeler.ids`, so that the floors below learning (the predictor, Label Studio
I/O) can use them (issue #24). These names stay importable from here.
"""

from labeler.errors import RegistryError  # noqa: F401
from labeler.ids import PROJECT_RE, VERSION_RE, check_project, check_version  # noqa: F401
from labeler.models.openregistry import open_registry, registry_for  # noqa: F401
from labeler.models.registry import Registry, version_kind  # noqa: F401
