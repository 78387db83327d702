"""Admin routes: trigger training, see jobs, promote or roll back. Bearer-token protected."""

from __future__ import annotations

import hmac

from flask import Blueprint, abort, jsonify, request

from labeler.registry import RegistryError

from .api import bad_request, state

bp = Blueprint("admin", __name__, url_prefix="/admin")


@bp.before_request
def _require_token():
    token = state().settings.admin_token
    if not token:
        abort(404)  # admin API off unless LABELER_ADMIN_TOKEN is set
    got = request.headers.get("Authorization", "")
    if not hmac.compare_digest(got.encode(), f"Bearer {token}".encode()):
        return jsonify({"status": "error", "error": "admin token required"}), 401


@bp.post("/projects/<project>/train")
def train(project: str):
    return jsonify({"status": "ok", "job": state().jobs.submit(project, trigger="admin API")}), 202


@bp.get("/projects/<project>/job")
def job(project: str):
    return jsonify(state().jobs.state(project))


@bp.post("/projects/<project>/promote")
def promote(project: str):
    data = request.get_json(silent=True) or {}
    version = data.get("version")
    try:
        state().predictor.registry.promote(project, version)
    except RegistryError as exc:
        return bad_request(str(exc), 404)
    return jsonify({"status": "ok", "serving": version or "zero-shot"})
