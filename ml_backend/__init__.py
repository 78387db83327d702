"""The Label Studio ML backend: a Flask application factory.

Routes (``ml_backend/api.py``): ``GET /health``, ``POST /setup``, ``POST /predict``,
``POST /webhook``, ``GET /versions``, ``GET /metrics``; admin routes
(``ml_backend/admin.py``) under ``/admin`` need ``Authorization: Bearer $LABELER_ADMIN_TOKEN``.
"""

from __future__ import annotations

import base64
import hmac
import logging
import threading

from flask import Flask, Response, request

from labeler.config import Settings

from .state import BackendState


def create_app(settings: Settings | None = None, load_in_background: bool = True) -> Flask:
    """Build the app; the zero-shot model loads in a background thread (``/health`` says when)."""
    settings = settings or Settings.from_env()
    app = Flask(__name__)
    app.config["LABELER_SETTINGS"] = settings
    state = BackendState(settings)
    app.extensions["labeler"] = state
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    if settings.basic_auth_user:
        @app.before_request
        def _basic_auth() -> Response | None:
            # Label Studio's auto-created webhook carries no credentials; /webhook only
            # queues work, so it stays open rather than rejecting every annotation event.
            # /admin has its own bearer token (both would need the Authorization header).
            if request.endpoint in {"api.webhook", "api.health"} or (request.endpoint or "").startswith("admin."):
                return None
            expected = f"{settings.basic_auth_user}:{settings.basic_auth_pass or ''}".encode()
            got = request.headers.get("Authorization", "")
            if got.startswith("Basic ") and hmac.compare_digest(
                    base64.b64decode(got[6:].encode() or b"=").strip(), expected):
                return None
            return Response("authentication required", 401, {"WWW-Authenticate": 'Basic realm="labeler"'})

    if settings.log_requests:
        log = logging.getLogger("ml_backend.requests")

        @app.after_request
        def _log_request(response: Response) -> Response:
            body = request.get_json(silent=True) if request.is_json else None
            summary = {k: "***" if k == "access_token" else (f"<{len(v)} items>" if isinstance(v, list) else v if not isinstance(v, str)
                           or len(v) < 80 else v[:77] + "...") for k, v in (body or {}).items()}
            log.info("%s %s %s <- %s", request.method, request.path, response.status_code, summary)
            return response

    from . import admin, api
    app.register_blueprint(api.bp)
    app.register_blueprint(admin.bp)

    if load_in_background:
        threading.Thread(target=state.predictor.load_scorer, name="load-model", daemon=True).start()
    else:
        state.predictor.load_scorer()
    return app
