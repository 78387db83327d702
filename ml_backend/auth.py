"""Who may call what: basic auth for Label Studio's routes, a secret for webhooks, a token for admins.

- ``BASIC_AUTH_USER``/``BASIC_AUTH_PASS`` set: every route Label Studio calls
  needs them (``/health`` excepted: it tells nothing and changes nothing).
- ``/webhook`` accepts basic auth or the header ``X-Labeler-Webhook-Secret``
  equal to ``LABELER_WEBHOOK_SECRET``; with neither configured it is open, and
  only triggers training of projects a verified ``/setup`` made known.
- ``/admin/*`` needs ``Authorization: Bearer $LABELER_ADMIN_TOKEN`` (off when unset), or the token in
  ``X-Labeler-Admin-Token`` (beside basic auth, where both would need ``Authorization``).
- Admin tokens (bearer, header or the dashboard's login form) are guessed no faster than
  :data:`GUESSES_PER_MINUTE` wrong ones a minute per client (:class:`GuessLimiter`): after that every
  admin token from that client, right or wrong, is refused (429) until fewer than that many fall in the
  last minute, so the answers tell a guesser nothing. Basic auth is not limited that way: behind a
  proxy every client shares one address, and a lockout would let anyone stop Label Studio's calls
  (give it a long random password).
"""

from __future__ import annotations

import hmac
import threading
import time

from flask import Request, current_app

from labeler.config import Settings
from labeler.studio.tasks import WEBHOOK_SECRET_HEADER


def _same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


def basic_auth_ok(req: Request, settings: Settings) -> bool:
    """True when basic auth is off, or the request carries the right user and password."""
    if not settings.basic_auth_user:
        return True
    auth = req.authorization  # Werkzeug parses the header; a malformed one is None
    return bool(auth and auth.type == "basic" and auth.username is not None
                and _same(auth.username, settings.basic_auth_user)
                & _same(auth.password or "", settings.basic_auth_pass or ""))


def webhook_ok(req: Request, settings: Settings) -> bool:
    if not settings.basic_auth_user and not settings.webhook_secret:
        return True
    if settings.webhook_secret and _same(req.headers.get(WEBHOOK_SECRET_HEADER, ""), settings.webhook_secret):
        return True
    return bool(settings.basic_auth_user) and req.authorization is not None and basic_auth_ok(req, settings)


ADMIN_TOKEN_HEADER = "X-Labeler-Admin-Token"
GUESSES_PER_MINUTE = 10  # wrong admin tokens a client may send a minute


class GuessLimiter:
    """Wrong admin tokens per client in the last ``window_s``; bounded memory (``max_clients``)."""

    def __init__(self, limit: int = GUESSES_PER_MINUTE, window_s: float = 60.0, max_clients: int = 10_000) -> None:
        self.limit, self.window_s, self.max_clients = limit, window_s, max_clients
        self._seen: dict[str, list[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, client: str, now: float) -> list[float]:
        return [t for t in self._seen.get(client, []) if now - t < self.window_s]

    def judge(self, client: str, right: bool) -> int:
        """A token sent by ``client``: 429 while it is over its limit (right or not), else 200 when
        ``right``, else 401 and the guess counted. One lock over the check and the count, so parallel
        requests cannot slip past the limit together."""
        with self._lock:
            now = time.monotonic()
            recent = self._recent(client, now)
            if len(recent) >= self.limit:
                return 429
            if right:
                return 200
            if len(self._seen) >= self.max_clients and client not in self._seen:
                self._seen = {c: r for c in self._seen if (r := self._recent(c, now))}
                if len(self._seen) >= self.max_clients:
                    self._seen.pop(next(iter(self._seen)))
            self._seen[client] = recent + [now]
            return 401


def _judge(req: Request, right: bool) -> int:
    limiter = current_app.extensions.setdefault("labeler_guesses", GuessLimiter())
    return limiter.judge(req.remote_addr or "?", right)


def admin_status(req: Request, settings: Settings) -> int:
    """200 for the admin token in ``Authorization: Bearer <token>``, or in ``X-Labeler-Admin-Token``
    where ``Authorization`` carries basic auth (``/metrics`` with its details on a backend that needs
    basic auth); 401 for none or a wrong one (which counts as a guess); 429 for a client over its
    guesses (:class:`GuessLimiter`), whatever it sends. A request with no token is no guess."""
    token = settings.admin_token
    bearer, header = req.headers.get("Authorization", ""), req.headers.get(ADMIN_TOKEN_HEADER, "")
    if not token or not (bearer.startswith("Bearer ") or header):
        return 401
    return _judge(req, _same(bearer, f"Bearer {token}") | _same(header, token))


def admin_ok(req: Request, settings: Settings) -> bool:
    return admin_status(req, settings) == 200


def login_status(req: Request, sent: str, settings: Settings) -> int:
    """The dashboard's login form: :func:`admin_status`'s answers for the token typed in."""
    return _judge(req, bool(settings.admin_token) and _same(sent, settings.admin_token or ""))


TOO_MANY_GUESSES = "too many wrong admin tokens from this address; wait a minute"


def why_refused(status: int, otherwise: str) -> str:
    """The error message for an :func:`admin_status` refusal: the guess limit's for 429, else ``otherwise``."""
    return TOO_MANY_GUESSES if status == 429 else otherwise
