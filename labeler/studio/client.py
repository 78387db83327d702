"""The one Label Studio client: :class:`Studio`, the SDK client with its :class:`Connection`.

Everything that talks to Label Studio takes a :class:`Studio`. Its SDK calls
are the public ones of label-studio-sdk; what the SDK has no call for (task
listings as plain dicts, narrow and paged; export downloads; the Data Manager's
ordering) goes through :meth:`Studio.request`, which uses the same token.
Image downloads use :attr:`Studio.conn` (see :mod:`labeler.media.fetching`).

Label Studio takes two kinds of token: a legacy API token (``Authorization:
Token ...``) and a personal access token, a JWT refresh token that is exchanged
at ``/api/token/refresh/`` for an access token that expires after minutes. The
access token is cached until shortly before its ``exp`` and refreshed then, or
at once after a 401 (:meth:`Connection.invalidate`).
"""

from __future__ import annotations

import base64
import json
import threading
import time
from typing import Any
from urllib.parse import urlsplit

import requests
from label_studio_sdk import LabelStudio

from labeler.errors import StudioError
from labeler.learning.registry import PROJECT_RE


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
        return resp.status_code == 200


class Studio(LabelStudio):
    """One Label Studio: the SDK client (public calls) plus :attr:`conn`, its URL and token.

    The SDK refreshes a personal access token by itself; :meth:`request` does the same
    through :class:`Connection` (refresh before ``exp``, and once more after a 401).
    """

    def __init__(self, url: str | None, token: str | None, timeout: float = 60) -> None:
        if not url or not token:
            raise StudioError("set LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY (or pass --url/--api-key)")
        super().__init__(base_url=url.rstrip("/"), api_key=token, timeout=timeout)
        self.conn = Connection(url, token)
        self.timeout = timeout

    @classmethod
    def connect(cls, url: str | None, token: str | None, check: bool = True, timeout: float = 60) -> "Studio":
        """A client; with ``check``, fail at once with a clear message if the server is not there."""
        studio = cls(url, token, timeout=timeout)
        if check:
            studio.check()
        return studio

    @classmethod
    def of(cls, conn: Connection, timeout: float = 60) -> "Studio":
        """The client for a known connection (the backend's per-project one)."""
        return cls(conn.base_url, conn.token, timeout=timeout)

    @property
    def url(self) -> str:
        return self.conn.base_url or ""

    def __repr__(self) -> str:
        return f"Studio({self.url!r})"

    def check(self) -> None:
        """Raise :class:`StudioError` unless ``/health`` answers."""
        try:
            requests.get(f"{self.url}/health", timeout=5).raise_for_status()
        except requests.RequestException as exc:
            raise StudioError(f"Label Studio at {self.url} is unreachable: {exc}") from exc

    def request(self, method: str, path: str, *, params: dict | None = None, json: Any = None,
                timeout: float | None = None, stream: bool = False) -> requests.Response:
        """``method`` on ``path`` (relative to the base URL) with this token; a 401 refreshes the
        access token and tries once more. Connection failures raise :class:`StudioError`."""
        url = f"{self.url}/{path.lstrip('/')}"
        for attempt in range(2):
            try:
                resp = requests.request(method, url, params=params, json=json, headers=self.conn.auth_headers(),
                                        timeout=timeout or self.timeout, stream=stream, allow_redirects=False)
            except requests.RequestException as exc:
                raise StudioError(f"Label Studio at {self.url}: {method} {path} failed: {exc}") from exc
            if resp.status_code != 401 or attempt:
                return resp
            self.conn.invalidate()
        return resp

    def get_json(self, path: str, params: dict | None = None, what: str = "") -> dict:
        """GET ``path`` as JSON; an HTTP error raises :class:`StudioError` naming ``what`` failed."""
        resp = self.request("GET", path, params=params)
        if resp.status_code >= 400:
            raise StudioError(f"{what or 'GET ' + path} failed: HTTP {resp.status_code} {resp.text[:200]}")
        return resp.json()
