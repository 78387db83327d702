"""Project ids and model version names: what they may look like, checked before any is used in a path or URL.

At the bottom of the package (README "Layout"): the registry, the Label Studio client, the predictor and
the service all check names with these.
"""

from __future__ import annotations

import re

from labeler.errors import InvalidName

VERSION_RE = re.compile(r"v\d{1,9}-[a-z0-9_]{1,32}")
PROJECT_RE = re.compile(r"[0-9]{1,12}")  # ASCII: "١" is a digit to str.isdigit and int()


def check_project(project: object) -> str:
    """``project`` as a registry key, or RegistryError (project ids are digits)."""
    key = str(project)
    if not PROJECT_RE.fullmatch(key):
        raise InvalidName(f"invalid project id {key[:40]!r}: expected digits")
    return key


def check_version(version: object) -> str:
    if not isinstance(version, str) or not VERSION_RE.fullmatch(version):
        raise InvalidName(f"invalid model version {str(version)[:40]!r}: expected a name like v3-head")
    return version
