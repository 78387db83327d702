"""A Label Studio base URL and token (:class:`Connection`): the auth headers its API and its
image URLs need, with a JWT's access token refreshed in time.

At the bottom of the package (README "Layout"): image fetching (:mod:`labeler.media.fetching`) and
the Label Studio client (:mod:`labeler.studio.client`, which re-exports it) both use it.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from urllib.parse import urlsplit

import requests

from labeler.ids import PROJECT_RE


def _jwt_exp(token: str) -> float | None:
    """The ``exp`` claim of a JWT (not verified: only used to know when to refresh)."""
    try:
        payload = token.split(".")[1]
        return float(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["exp"])
    except (IndexError, ValueError, KeyError, TypeError):
        return None


class Connection:
    """A Label Studio base URL and token. Both may be None (no Label Studio known)."""

    def __init__(self, url: str | None = None, token: str | None = None) -> None:
        self.base_url = url.rstrip("/") if url else None
        self.token = token or None
        parts = urlsplit(self.base_url) if self.base_url else None
        # API paths are appended to the URL: a query or fragment would swallow them (/setup's check of
        # "host/ok?" would GET "host/ok?/api/projects/1/"), and credentials belong in the token
        if self.base_url and parts and ("?" in self.base_url or "#" in self.base_url or "@" in parts.netloc):
            raise ValueError("a Label Studio URL is scheme://host[:port][/path], without query, fragment or user")
        self.origin = f"{parts.scheme}://{parts.netloc}".lower() if parts and parts.netloc else None
        self.path_prefix = parts.path.rstrip("/") if parts else ""
        self._header: dict[str, str] | None = None
        self._expires = 0.0
        self._lock = threading.Lock()

    @property
    def hostname(self) -> str | None:  # the name Label Studio's /setup uses
        return self.base_url

    def __bool__(self) -> bool:
        return bool(self.base_url and self.token)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Connection) and (self.base_url, self.token) == (other.base_url, other.token)

    def __hash__(self) -> int:
        return hash((self.base_url, self.token))

    def __repr__(self) -> str:
        return f"Connection({self.base_url!r}, token={'***' if self.token else None})"

    def is_jwt(self) -> bool:
        return self.token is not None and self.token.count(".") == 2

    def auth_headers(self) -> dict[str, str]:
        """``Authorization`` for Label Studio: legacy ``Token``, or a fresh ``Bearer`` access token."""
        if not self.token:
            return {}
        if not self.is_jwt():
            return {"Authorization": f"Token {self.token}"}
        with self._lock:
            if self._header is None or time.time() > self._expires:
                self._header, self._expires = self._refresh()
            return dict(self._header)

    def invalidate(self) -> None:
        """Forget the cached access token (after a 401): the next call refreshes it."""
        with self._lock:
            self._header = None

    def _refresh(self) -> tuple[dict[str, str], float]:
        if not self.base_url:
            return {}, 0.0
        try:
            resp = requests.post(f"{self.base_url}/api/token/refresh/", json={"refresh": self.token}, timeout=10)
        except requests.RequestException:
            return {}, 0.0
        if not resp.ok:
            return {}, 0.0
        access = resp.json().get("access", "")
        exp = _jwt_exp(access) or time.time() + 60
        return {"Authorization": f"Bearer {access}"}, exp - 30  # refresh 30 s before it expires

    def can_read_project(self, project: str, timeout: float = 2.5) -> bool:
        """True when this token may read ``project`` on this Label Studio (how /setup is verified)."""
        if not self or not PROJECT_RE.fullmatch(str(project)):
            return False
        try:
            resp = requests.get(f"{self.base_url}/api/projects/{project}/", headers=self.auth_headers(),
                                timeout=timeout, allow_redirects=False)
        except requests.RequestException:
            return False
        try:  # Label Studio answers with the project itself; any other 200 is not proof
            return resp.status_code == 200 and str(resp.json().get("id")) == str(project)
        except (ValueError, AttributeError):
            return False
