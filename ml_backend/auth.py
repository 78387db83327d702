"""Who may call what: basic auth for Label Studio's routes, a secret for webhooks, a token for admins.

- ``BASIC_AUTH_USER``/``BASIC_AUTH_PASS`` set: every route Label Studio calls
  needs them (``/health`` excepted: it tells nothing and changes nothing).
- ``/webhook`` accepts basic auth or the header ``X-Labeler-Webhook-Secret``
  equal to ``LABELER_WEBHOOK_SECRET``; with neither configured it is open, and
  only triggers training of projects a verified ``/setup`` made known.
- ``/admin/*`` needs ``Authorization: Bearer $LABELER_ADMIN_TOKEN`` (off when unset), or the token in
  ``X-Labeler-Admin-Token`` (beside basic auth, where both would need ``Authorization``).
- Admin tokens are guessed no faster than :data:`GUESSES_PER_MINUTE` wrong ones a minute per client
  (:class:`GuessLimiter`): after that every admin token from that client, right or wrong, is refused
  until the minute has passed, so the answers tell a guesser nothing. Basic auth is not limited that
  way: behind a proxy every client shares one address, and a lockout would let anyone stop Label
  Studio's calls (give it a long random password).
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

    def blocked(self, client: str) -> bool:
        with self._lock:
            return len(self._recent(client, time.monotonic())) >= self.limit

    def add(self, client: str) -> None:
        with self._lock:
            now = time.monotonic()
            if len(self._seen) >= self.max_clients and client not in self._seen:
                self._seen = {c: r for c, ts in self._seen.items() if (r := self._recent(c, now))}
                if len(self._seen) >= self.max_clients:
                    self._seen.pop(next(iter(self._seen)))
            self._seen[client] = self._recent(client, now) + [now]


def _limiter() -> GuessLimiter:
    return current_app.extensions.setdefault("labeler_guesses", GuessLimiter())


def too_many_guesses(req: Request) -> bool:
    """This client sent :data:`GUESSES_PER_MINUTE` wrong admin tokens in the last minute."""
    return _limiter().blocked(req.remote_addr or "?")


def wrong_guess(req: Request) -> None:
    _limiter().add(req.remote_addr or "?")


def admin_ok(req: Request, settings: Settings) -> bool:
    """``Authorization: Bearer <token>``, or the token in ``X-Labeler-Admin-Token`` where ``Authorization``
    carries basic auth (``/metrics`` with its details on a backend that needs basic auth). A wrong token
    counts as a guess; a client with too many is refused whatever it sends (:class:`GuessLimiter`)."""
    token = settings.admin_token
    if not token:
        return False
    bearer, header = req.headers.get("Authorization", ""), req.headers.get(ADMIN_TOKEN_HEADER, "")
    right = _same(bearer, f"Bearer {token}") | _same(header, token)
    if too_many_guesses(req):
        return False
    if not right and (bearer.startswith("Bearer ") or header):
        wrong_guess(req)
    return right
