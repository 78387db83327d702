"""Running labeler on an existing Ray cluster (optional extra ``labeler[ray]``).

Nothing here is imported unless Ray is asked for: without ``RAY_ADDRESS`` (the
bulk path) or ``RAY_API_SERVER_ADDRESS`` (training jobs) set, every command
keeps its in-process path (:class:`labeler.config.Settings` reads both).
"""

from __future__ import annotations

from labeler.errors import SettingsError


def ray_installed() -> bool:
    try:
        import ray  # noqa: F401
    except ImportError:
        return False
    return True


def require_ray() -> None:
    """Fail with a clear message when the Ray path is asked for without Ray."""
    if not ray_installed():
        raise SettingsError("the Ray engine needs Ray: pip install 'labeler[ray]'")
