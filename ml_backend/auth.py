"""Who may call what: basic auth for Label Studio's routes, a secret for webhooks, a token for admins.

- ``BASIC_AUTH_USER``/``BASIC_AUTH_PASS`` set: every route Label Studio calls
  needs them (``/health`` excepted: it tells nothing and changes nothing).
- ``/webhook`` accepts basic auth or the header ``X-Labeler-Webhook-Secret``
  equal to ``LABELER_WEBHOOK_SECRET``; with neither configured it is open, and
  only triggers training of projects a verified ``/setup`` made known.
- ``/admin/*`` needs ``Authorization: Bearer $LABELER_ADMIN_TOKEN`` (off when unset), or the token in
  ``X-Labeler-Admin-Token`` (beside basic auth, where both would need ``Authorization``).
"""

from __future__ import annotations

import hmac

from flask import Request

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


def admin_ok(req: Request, settings: Settings) -> bool:
    """``Authorization: Bearer <token>``, or the token in ``X-Labeler-Admin-Token`` where ``Authorization``
    carries basic auth (``/metrics`` with its details on a backend that needs basic auth)."""
    token = settings.admin_token
    if not token:
        return False
    return _same(req.headers.get("Authorization", ""), f"Bearer {token}") | _same(req.headers.get(ADMIN_TOKEN_HEADER, ""), token)
