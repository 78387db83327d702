"""Admin routes: trigger training, see jobs, promote or roll back. Bearer-token protected."""

from __future__ import annotations

from pathlib import Path

from flask import Blueprint, abort, jsonify, request, send_file

from labeler.errors import InvalidName
from labeler.ids import check_project, check_version

from .api import bad_request, state
from .auth import admin_status, why_refused

bp = Blueprint("admin", __name__, url_prefix="/admin")


@bp.before_request
def _require_token():
    if not state().settings.admin_token:
        abort(404)  # admin API off unless LABELER_ADMIN_TOKEN is set
    status = admin_status(request, state().settings)
    if status != 200:
        return bad_request(why_refused(status, "admin token required"), status)
    return None


@bp.post("/projects/<project>/train")
def train(project: str):
    return jsonify({"status": "ok", "job": state().jobs.submit(check_project(project), trigger="admin API")}), 202


@bp.get("/projects/<project>/job")
def job(project: str):
    return jsonify(state().jobs.state(check_project(project)))


def requested_version(data: object) -> str | None:
    """The version a promote asks for: ``{"version": "v3-head"}``; ``"zero-shot"``, ``"zeroshot"`` or null
    roll back to the zero-shot model. A body without the key is refused (InvalidName, 400), never read
    as a roll-back."""
    if not isinstance(data, dict) or "version" not in data:  # a form is a dict too (Werkzeug's MultiDict)
        raise InvalidName('expected {"version": "v3-head"}, or {"version": "zero-shot"} to roll back')
    version = data.get("version")
    return None if version in (None, "zeroshot", "zero-shot") else check_version(version)


@bp.post("/projects/<project>/promote")
def promote(project: str):
    version = requested_version(request.get_json(silent=True))
    job = state().serve(check_project(project), version)
    return jsonify({"status": "ok", "serving": version or "zero-shot", "job": job})


@bp.get("/doctor")
def doctor():
    """`labeler doctor`'s checks as this backend sees them: ``{"ok": ..., "checks": [{name, ok, detail, fix}]}``."""
    from .doctor import backend_checks

    checks = backend_checks(state())
    return jsonify({"ok": all(c.ok for c in checks), "checks": [c.as_dict() for c in checks]})


@bp.get("/projects/<project>/map")
def data_map(project: str):
    """The project's latest dataset map (``labeler map --project``): one self-contained HTML page."""
    path = state().predictor.registry.project_dir(check_project(project)) / "map.html"
    if not path.is_file():
        return bad_request(f"no map of project {project} yet: run labeler map --project {project}", 404)
    resp = send_file(path, mimetype="text/html")
    # Everything is inline (points, thumbnails as data: URLs, script); nothing else may load.
    resp.headers["Content-Security-Policy"] = ("default-src 'none'; img-src data:; style-src 'unsafe-inline'; "
                                               "script-src 'unsafe-inline'")
    return resp


def annotator_report(project: str) -> tuple[dict | None, str | None]:
    """``labeler annotators --json`` as this backend sees the project (known labels: ground truth and
    ``LABELER_HONEYPOTS``; the last training's classifier votes): (the report, None), or (None, why not).
    The admin JSON and the admin page's table and plot both show it."""
    from labeler.learning.team_report import project_report
    from labeler.studio.team import load_votes, read_known

    st = state()
    key = check_project(project)
    studio = st.studio(key)
    if studio is None:
        return None, f"project {key} has no known Label Studio (connect the backend, or set LABEL_STUDIO_URL)"
    known = read_known(Path(st.settings.honeypots)) if st.settings.honeypots else None
    votes = load_votes(st.settings.model_dir, key)
    return project_report(studio, int(key), st.settings.control_rate, known, votes), None


@bp.get("/projects/<project>/annotators")
def annotators(project: str):
    """Annotator quality (``labeler annotators --json``): accuracy, confusion, kappa, speed, automation bias."""
    report, why = annotator_report(project)
    return bad_request(why or "no report", 409) if report is None else jsonify(report)
