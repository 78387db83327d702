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

from typing import Any

import httpx
import requests
from label_studio_sdk import LabelStudio

from labeler.connection import Connection
from labeler.errors import StudioError


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


def unreachable(exc: BaseException | None) -> bool:
    """True when ``exc``, or an exception it was raised from, is a failure to reach a server at all
    (refused, reset, timed out), as opposed to an answer that refused the request. The SDK raises
    httpx's errors and :meth:`Studio.request` wraps requests' in :class:`StudioError`."""
    seen = 0
    while exc is not None and seen < 20:
        if isinstance(exc, (httpx.TransportError, requests.ConnectionError, requests.Timeout)):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False
