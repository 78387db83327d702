"""The Label Studio ML backend: a Flask application factory.

Routes (``ml_backend/api.py``): ``GET /health``, ``POST /setup``, ``POST /predict``,
``POST /webhook``, ``GET /versions``, ``GET /metrics``; admin routes
(``ml_backend/admin.py``) under ``/admin`` need ``Authorization: Bearer $LABELER_ADMIN_TOKEN``.
Who may call what: ``ml_backend/auth.py``; what may be fetched: ``labeler/fetching.py``.
"""

from __future__ import annotations

import logging
import threading

from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException

from labeler.config import Settings
from labeler.errors import LabelerError

from .auth import basic_auth_ok
from .state import BackendState

log = logging.getLogger(__name__)
# Routes with their own credentials: /webhook (basic auth or a secret), /admin (a bearer token).
_OWN_AUTH = {"api.health", "api.webhook"}


def create_app(settings: Settings | None = None, load_in_background: bool = True) -> Flask:
    """Build the app; the zero-shot model loads in a background thread (``/health`` says when)."""
    settings = (settings or Settings.from_env()).validated()
    app = Flask(__name__)
    app.config["LABELER_SETTINGS"] = settings
    app.config["MAX_CONTENT_LENGTH"] = int(settings.max_request_mb * 2**20)  # larger bodies: 413
    state = BackendState(settings)
    app.extensions["labeler"] = state
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    @app.before_request
    def _basic_auth() -> Response | None:
        endpoint = request.endpoint or ""
        if endpoint in _OWN_AUTH or endpoint.startswith(("admin.", "dashboard.")) or basic_auth_ok(request, settings):
            return None
        return Response("authentication required", 401, {"WWW-Authenticate": 'Basic realm="labeler"'})

    _error_handlers(app)
    if settings.log_requests:
        _request_log(app)

    from . import admin, api, dashboard
    app.register_blueprint(api.bp)
    app.register_blueprint(admin.bp)
    app.register_blueprint(dashboard.bp)  # /dashboard: the admin page, with its own token login

    if load_in_background:
        threading.Thread(target=state.predictor.load_scorer, name="load-model", daemon=True).start()
    else:
        state.predictor.load_scorer()
    return app


def _error_handlers(app: Flask) -> None:
    """Every error is JSON ``{"status": "error", "error": ...}`` with a fitting status code."""

    def body(message: str, status: int):
        return jsonify({"status": "error", "error": message}), status

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException):
        return body(exc.description or exc.name, exc.code or 500)

    @app.errorhandler(LabelerError)
    def _labeler(exc: LabelerError):
        return body(str(exc), exc.status)

    @app.errorhandler(RecursionError)
    def _too_deep(exc: RecursionError):  # JSON nested deeper than the parser goes: nobody's real request
        log.warning("RecursionError on %s %s (a request body nested too deeply?)", request.method, request.path,
                    exc_info=True)  # logged in full: a recursion bug of our own must not pass for bad input
        return body("request body nested too deeply", 400)

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):
        log.exception("unhandled error on %s %s", request.method, request.path)
        return body(f"internal error ({type(exc).__name__}); see the backend log", 500)


def _request_log(app: Flask) -> None:
    """Log each request Label Studio sends, with tokens redacted and long values cut."""
    req_log = logging.getLogger("ml_backend.requests")

    def short(key: str, value: object) -> object:
        if key in {"access_token", "api_key", "token"}:
            return "***"
        if isinstance(value, list):
            return f"<{len(value)} items>"
        if isinstance(value, str) and len(value) >= 80:
            return value[:77] + "..."
        return value if not isinstance(value, dict) else "{...}"

    @app.after_request
    def _log(response: Response) -> Response:
        try:
            body = request.get_json(silent=True) if request.is_json else None
        except (HTTPException, RecursionError):  # e.g. 413: the body was never read
            body = None
        summary = {k: short(k, v) for k, v in body.items()} if isinstance(body, dict) else type(body).__name__
        req_log.info("%s %s %s <- %s", request.method, request.path, response.status_code, summary)
        return response
