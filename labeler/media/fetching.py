"""The one place that decides what may be fetched for a task, and fetches it within bounds.

Task image references are untrusted: whoever can create a task chooses them.
The rules (README, "Security model"):

- ``data:`` URLs are decoded (size-capped);
- Label Studio's own files, ``/data/...`` relative to its URL or absolute on its
  origin, are fetched with the API token; the token goes to no other origin
  (scheme, host and port) and to no other path;
- task images in cloud storage go through Label Studio's resolve endpoint
  (``/tasks/<id>/resolve/?fileuri=...``, with the token): it answers with the
  file, or redirects to a presigned URL, which is followed without the token
  and only to a public address (or a host named in the allow-list);
- other ``http(s)`` URLs only to hosts the operator allows
  (``LABELER_ALLOWED_HOSTS``); a host that is not named exactly (``*`` or a
  ``*.suffix`` pattern) must resolve to a public address. The address is
  checked on the connected socket itself, so DNS rebinding and redirects to
  internal services are refused too; every redirect hop is re-checked;
- local paths and ``file://`` only when a local root is configured (CLI and
  offline use), only regular files under that root;
- every fetch has a byte cap and a total deadline; slow senders are cut off.
"""

from __future__ import annotations

import base64
import binascii
import fnmatch
import ipaddress
import os
import re
import stat
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urljoin, urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from labeler.config import Settings
from labeler.connection import Connection
from labeler.media.images import ImageError

MAX_REF_CHARS = 4096       # a longer non-data reference is not a URL anyone meant
MAX_REDIRECTS = 3
_RESOLVE = re.compile(r"/tasks/\d{1,12}/resolve/\?fileuri=[A-Za-z0-9_=-]{1,4000}")


@dataclass(frozen=True)
class FetchPolicy:
    """What may be fetched, and how much. Built from :class:`labeler.config.Settings`."""

    allowed_hosts: tuple[str, ...] = ()   # host names or patterns (``*.example.com``, ``*``); may carry ``:port``
    local_root: Path | None = None        # local files only under this folder; None: never
    max_bytes: int = 20 * 2**20
    timeout_s: float = 20.0               # total per download (connect + every byte)

    def host_allowed(self, host: str, port: int | None) -> tuple[bool, bool]:
        """(allowed at all, may resolve to a private address) for ``host:port``."""
        host = host.lower().rstrip(".")
        for pattern in self.allowed_hosts:
            pat_host, _, pat_port = pattern.lower().partition(":")
            if pat_port and str(port) != pat_port:
                continue
            if pat_host == host:
                return True, True        # named exactly: the operator vouches for it
            if pat_host == "*" or fnmatch.fnmatchcase(host, pat_host):
                return True, False       # a pattern: public addresses only
        return False, False


def ip_address(ip: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """The address ``ip`` names, without an IPv6 zone, an IPv4-mapped IPv6 address as its IPv4 address
    (``::ffff:127.0.0.1`` is loopback)."""
    addr = ipaddress.ip_address(ip.split("%")[0])
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))


def _embedded_ipv4(addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one leads to where networks translate it: NAT64 (``64:ff9b::a.b.c.d``),
    6to4 (``2002:aabb:ccdd::``) and the old IPv4-compatible form (``::a.b.c.d``)."""
    if not isinstance(addr, ipaddress.IPv6Address):
        return None
    if any(addr in net for net in _NAT64) or (int(addr) >> 32 == 0 and int(addr) > 1):
        return ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF)
    return addr.sixtofour


def is_public(ip: str) -> bool:
    """True when ``ip`` is a global unicast address (not loopback, private, link-local, ...), and so is
    the IPv4 address it embeds, if any (:func:`_embedded_ipv4`)."""
    addr = ip_address(ip)
    inner = _embedded_ipv4(addr)
    return addr.is_global and not addr.is_multicast and (inner is None or (inner.is_global and not inner.is_multicast))


def _guarded_adapter(check: Callable[[str, int | None, str], None]) -> HTTPAdapter:
    """A requests adapter whose sockets are checked by ``check(host, port, peer_ip)`` right after connecting."""

    def _new_conn(base):
        def new_conn(self):
            sock = base._new_conn(self)
            try:
                check(self.host, self.port, sock.getpeername()[0])
            except BaseException:
                sock.close()
                raise
            return sock
        return new_conn

    http_conn = type("GuardedHTTPConnection", (HTTPConnection,), {"_new_conn": _new_conn(HTTPConnection)})
    https_conn = type("GuardedHTTPSConnection", (HTTPSConnection,), {"_new_conn": _new_conn(HTTPSConnection)})
    pools = {"http": type("GuardedHTTPPool", (HTTPConnectionPool,), {"ConnectionCls": http_conn}),
             "https": type("GuardedHTTPSPool", (HTTPSConnectionPool,), {"ConnectionCls": https_conn})}

    class GuardedAdapter(HTTPAdapter):
        def init_poolmanager(self, *args, **kwargs):
            super().init_poolmanager(*args, **kwargs)
            self.poolmanager.pool_classes_by_scheme = pools

    return GuardedAdapter(max_retries=0)


class Fetcher:
    """Fetches task images for one Label Studio connection under a :class:`FetchPolicy`.

    ``deadline`` (a ``time.monotonic()`` value) bounds every download of this
    fetcher, e.g. to the time budget of one ``/predict`` request.
    """

    def __init__(self, policy: FetchPolicy, conn: Connection | None = None,
                 deadline: float | None = None) -> None:
        self.policy = policy
        self.conn = conn or Connection()
        self.deadline = deadline
        self.session = requests.Session()
        self.session.trust_env = False  # no proxies or .netrc credentials from the environment
        adapter = _guarded_adapter(self._check_peer)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)

    # -- policy ----------------------------------------------------------------------
    def _studio_host(self, host: str | None, port: int | None) -> bool:
        origin = self.conn.origin
        if not origin:
            return False
        o = urlsplit(origin)
        return (host or "").lower() == (o.hostname or "") and port == _port(o)

    def _check_url(self, url: str, presigned: bool = False) -> None:
        """``presigned``: the target of Label Studio's resolve redirect, which may be any host (the
        socket check still requires a public address unless the host is named in the allow-list)."""
        parts = split_url(url)
        if parts.scheme not in {"http", "https"} or not parts.hostname:
            raise ImageError(f"refused {_short(url)}: only http(s) URLs are fetched")
        if has_dot_segment(parts.path):
            # the client collapses them before sending: /data/../api/... would take the token to the API
            raise ImageError(f"refused {_short(url)}: '.' and '..' path segments")
        if parts.username or parts.password:
            raise ImageError(f"refused {_short(url)}: credentials in URLs are not sent")
        if presigned or self._studio_host(parts.hostname, _port(parts)):
            return
        allowed, _ = self.policy.host_allowed(parts.hostname, _port(parts))
        if not allowed:
            raise ImageError(f"refused {_short(url)}: host {parts.hostname} is not Label Studio's and not in "
                             "LABELER_ALLOWED_HOSTS")

    def _check_peer(self, host: str, port: int | None, ip: str) -> None:
        # Label Studio's own origin, and a host the operator named exactly, may be private; a pattern may not
        # (nor another port of Label Studio's host: that is another service)
        named = self._studio_host(host, port) or self.policy.host_allowed(host, port)[1]
        if not named and not is_public(ip):
            raise ImageError(f"refused {host}: it resolves to the non-public address {ip}")

    def _send_token(self, url: str) -> bool:
        """The token goes only to Label Studio's exact origin, and only for its ``/data/`` files
        and its cloud-storage resolve endpoint."""
        p = urlsplit(url)
        return (self.conn.origin is not None and f"{p.scheme}://{p.netloc}".lower() == self.conn.origin
                and (p.path.startswith(self.conn.path_prefix + "/data/") or self._is_resolve(url)))

    def _is_resolve(self, url: str) -> bool:
        p = urlsplit(url)
        path = p.path[len(self.conn.path_prefix):] if p.path.startswith(self.conn.path_prefix) else ""
        return bool(_RESOLVE.fullmatch(f"{path}?{p.query}"))

    # -- fetching ----------------------------------------------------------------------
    def get(self, ref: object) -> bytes:
        """Raw bytes of the image ``ref`` points at; raises :class:`ImageError` with the reason."""
        if not isinstance(ref, str) or not ref:
            raise ImageError(f"task has no image reference (got {type(ref).__name__})")
        if ref.startswith("data:"):
            return self._data_url(ref)
        if len(ref) > MAX_REF_CHARS:
            raise ImageError(f"image reference of {len(ref)} characters refused (limit {MAX_REF_CHARS})")
        parts = split_url(ref)
        scheme = parts.scheme.lower()
        if scheme in {"http", "https"}:
            return self._http(ref)
        if scheme == "file":
            return self._local(unquote(parts.path))
        if scheme:
            raise ImageError(f"unsupported image URL scheme {scheme!r}")
        base = self.conn.base_url if ref.startswith("/data/") or _RESOLVE.fullmatch(ref) else None
        if self.policy.local_root is not None and not (base and not self._under_root(ref)):
            return self._local(ref)
        if base:
            return self._http(base + ref)
        raise ImageError("local paths are not read by the backend, and relative URLs need a Label Studio "
                         "connection (only /data/... files of Label Studio are fetched)")

    def _data_url(self, ref: str) -> bytes:
        meta, _, payload = ref.partition(",")
        if len(payload) > self.policy.max_bytes * 4 // 3 + 4:
            raise ImageError(f"inline image larger than {self.policy.max_bytes} bytes")
        try:
            return base64.b64decode(payload, validate=False) if ";base64" in meta else \
                unquote(payload).encode("latin-1")
        except (binascii.Error, ValueError) as exc:
            raise ImageError(f"bad data: URL: {exc}") from exc

    def _under_root(self, path: str) -> bool:
        if self.policy.local_root is None:
            return False
        root = os.path.realpath(self.policy.local_root)
        return Path(os.path.realpath(Path(root) / path)).is_relative_to(root) and os.path.exists(Path(root) / path)

    def _local(self, path: str) -> bytes:
        root = self.policy.local_root
        if root is None:
            raise ImageError("local files are not read here (no local root configured)")
        try:
            real = Path(os.path.realpath(Path(root) / path))
            if not real.is_relative_to(os.path.realpath(root)):
                raise ImageError(f"refused local path outside {root}")
            # O_NONBLOCK: opening a FIFO must not wait for a writer; then only regular files are read.
            fd = os.open(real, os.O_RDONLY | os.O_NONBLOCK)
        except OSError as exc:
            raise ImageError(f"cannot read local file: {exc.strerror or exc}") from None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise ImageError("refused local path: not a regular file")
            with os.fdopen(os.dup(fd), "rb") as f:
                data = f.read(self.policy.max_bytes + 1)
        finally:
            os.close(fd)
        if len(data) > self.policy.max_bytes:
            raise ImageError(f"image file larger than {self.policy.max_bytes} bytes")
        return data

    def _http(self, url: str) -> bytes:
        end = time.monotonic() + self.policy.timeout_s
        if self.deadline is not None:
            end = min(end, self.deadline)
        retried_auth, presigned = False, False
        for _ in range(MAX_REDIRECTS + 1):
            self._check_url(url, presigned)
            remaining = end - time.monotonic()
            if remaining <= 0:
                raise ImageError(f"download of {_short(url)} ran out of time")
            headers = self.conn.auth_headers() if self._send_token(url) else {}
            try:
                resp = self.session.get(url, headers=headers, stream=True, allow_redirects=False,
                                        timeout=(min(5.0, remaining), min(5.0, remaining)))
            except ImageError:
                raise
            except requests.RequestException as exc:
                raise ImageError(f"cannot download {_short(url)}: {_reason(exc)}") from None
            with resp:
                if resp.is_redirect:
                    presigned = bool(headers) and self._is_resolve(url)
                    url = urljoin(url, resp.headers.get("location", ""))
                    continue
                if resp.status_code == 401 and headers and not retried_auth:
                    self.conn.invalidate()  # an expired access token: refresh once and retry
                    retried_auth = True
                    continue
                if resp.status_code != 200:
                    raise ImageError(f"cannot download {_short(url)}: HTTP {resp.status_code}")
                return self._read_body(resp, url, end)
        raise ImageError(f"cannot download {_short(url)}: more than {MAX_REDIRECTS} redirects")

    def _read_body(self, resp: requests.Response, url: str, end: float) -> bytes:
        cap = self.policy.max_bytes
        length = resp.headers.get("content-length", "")
        if length.isdigit() and int(length) > cap:
            raise ImageError(f"{_short(url)} is {int(length)} bytes, over the {cap}-byte limit")
        body = bytearray()
        try:
            while True:
                # read1 returns after one receive, so the deadline is checked between every few bytes
                chunk = resp.raw.read1(65536, decode_content=True)
                if not chunk:
                    return bytes(body)
                body += chunk
                if len(body) > cap:
                    raise ImageError(f"{_short(url)} is over the {cap}-byte limit")
                if time.monotonic() > end:
                    raise ImageError(f"download of {_short(url)} ran out of time")
        except (requests.RequestException, OSError, ValueError) as exc:
            raise ImageError(f"cannot download {_short(url)}: {_reason(exc)}") from None

    def get_many(self, refs: Sequence[object], workers: int = 8) -> list[bytes | ImageError]:
        """:meth:`get` every reference concurrently; each slot holds the bytes or the error."""
        def one(ref: object) -> bytes | ImageError:
            try:
                return self.get(ref)
            except ImageError as exc:
                return exc
        if len(refs) <= 1:
            return [one(r) for r in refs]
        with ThreadPoolExecutor(max_workers=min(workers, len(refs))) as pool:
            return list(pool.map(one, refs))


def split_url(url: str):
    """``urlsplit``, with a malformed URL (a bad IPv6 literal, a port out of range) an :class:`ImageError`."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - parsed on access: a bad port raises here, not later in the fetch
    except ValueError as exc:
        raise ImageError(f"malformed URL {_short(url)}: {exc}") from None
    return parts


def has_dot_segment(path: str) -> bool:
    """Whether ``path`` has a ``.`` or ``..`` segment, also percent-encoded or after a backslash."""
    return any(seg in {".", ".."} for seg in unquote(path).replace("\\", "/").split("/"))


def _port(parts) -> int:
    return parts.port or (443 if parts.scheme == "https" else 80)


def _short(url: str) -> str:
    return url if len(url) <= 120 else url[:117] + "..."


def _reason(exc: BaseException) -> str:
    """The innermost reason of a requests/urllib3 error (an ImageError from the peer check included)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, ImageError):
            return str(exc)
        nxt = exc.__cause__ or exc.__context__ or (exc.args[0] if exc.args and isinstance(exc.args[0], BaseException)
                                                   else None)
        if nxt is None:
            reason = getattr(exc, "reason", None)
            nxt = reason if isinstance(reason, BaseException) else None
        if nxt is None:
            break
        exc = nxt
    return type(exc).__name__ if exc is not None else "error"


def parse_hosts(raw: str | Iterable[str] | None) -> tuple[str, ...]:
    """``"a.example.com, *.cdn.net:443"`` -> ``("a.example.com", "*.cdn.net:443")``."""
    if raw is None:
        return ()
    items = raw.split(",") if isinstance(raw, str) else raw
    return tuple(h.strip() for h in items if h and h.strip())



def fetch_policy(settings: Settings, local_files: bool = True) -> FetchPolicy:
    """What ``settings`` allow to be fetched; the backend passes ``local_files=False``."""
    return FetchPolicy(allowed_hosts=parse_hosts(settings.allowed_hosts),
                       local_root=settings.local_root if local_files else None,
                       max_bytes=settings.max_image_bytes, timeout_s=settings.download_timeout_s)


__all__ = ["FetchPolicy", "Fetcher", "ImageError", "fetch_policy", "is_public", "parse_hosts"]
