"""Running labeler on an existing Ray cluster (optional extra ``labeler[ray]``).

Nothing here is imported unless Ray is asked for: without Ray installed or
``RAY_ADDRESS`` set, every command keeps its in-process path.
"""

from __future__ import annotations

import os


def ray_address(env: dict | None = None) -> str | None:
    """The Ray cluster to use (``RAY_ADDRESS``), or None for the in-process path."""
    value = ((env if env is not None else os.environ).get("RAY_ADDRESS") or "").strip()
    return value or None


def ray_installed() -> bool:
    try:
        import ray  # noqa: F401
    except ImportError:
        return False
    return True


def require_ray() -> None:
    """Fail with a clear message when the Ray path is asked for without Ray."""
    if not ray_installed():
        raise RuntimeError("the Ray engine needs Ray: pip install 'labeler[ray]'")
