"""The admin page: projects, serving version, job state, every version's metrics, learning curve,
confusion matrix, the "Finishing" section (:mod:`labeler.learning.finishing`: forecast, plateau, cost
to finish, with the fitted curve), and promote / rollback / train actions.

One URL, ``/dashboard``, for people and programs: a browser that asks for
``text/html`` explicitly (Chromium sends ``text/html,...,*/*;q=0.8,
application/signed-exchange;v=b3;q=0.7``) gets the page; anything else gets
JSON. Both need ``LABELER_ADMIN_TOKEN``: API clients send
``Authorization: Bearer <token>``; a browser logs in once through a form,
which sets a session cookie (HttpOnly, SameSite=Strict, scoped to
``/dashboard``, signed with a key derived from the token and a random key kept
in ``MODEL_DIR``, so changing the token logs everyone out and a cookie cannot
test guesses of the token offline). Wrong tokens, by form, bearer or header, are
counted per client (:class:`ml_backend.auth.GuessLimiter`): after ten in a minute
that client's tokens get 429 at once (the form, the JSON routes and the POSTs; a
logged-in session is not held back), with no thread kept waiting. Every POST form carries a CSRF token tied to the
session. With no admin token configured the page does not exist (404), like
the admin API.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import logging
import math
import os
import secrets
import time
from pathlib import Path

from flask import (
    Blueprint,
    abort,
    jsonify,
    redirect,
    render_template_string,
    request,
    session,
    url_for,
)

from labeler.errors import LabelerError
from labeler.ids import check_project
from labeler.learning.plotting import headless_matplotlib

from .admin import requested_version
from .api import bad_request, metrics_report, state, wants_html
from .auth import admin_status, login_status, why_refused

log = logging.getLogger(__name__)
bp = Blueprint("dashboard", __name__, url_prefix="/dashboard")
_SESSION_MARK = "labeler-admin"


@bp.record_once
def _configure_sessions(setup) -> None:
    app = setup.app
    token = app.config["LABELER_SETTINGS"].admin_token or ""
    # Flask signs the session cookie with secret_key. Derived from the token alone, a cookie would let anyone
    # test guesses of the token offline; a random key kept in MODEL_DIR keys it, the token keeps its say.
    app.secret_key = app.secret_key or hmac.new(
        _random_key(app.config["LABELER_SETTINGS"].model_dir / "dashboard-session.key"),
        b"labeler dashboard session " + token.encode(), hashlib.sha256).digest()
    app.config.update(SESSION_COOKIE_NAME="labeler_admin", SESSION_COOKIE_HTTPONLY=True,
                      SESSION_COOKIE_SAMESITE="Strict", SESSION_COOKIE_PATH="/dashboard")


def _random_key(path: Path) -> bytes:
    """32 random bytes kept at ``path`` (mode 0600), made once: every process of the backend signs alike."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(secrets.token_bytes(32))
        try:
            os.link(tmp, path)  # atomic, and the first process to get there wins
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    return path.read_bytes()


def _logged_in() -> bool:
    return session.get("admin") == _SESSION_MARK


def _csrf_token() -> str:
    if "csrf" not in session:
        session["csrf"] = secrets.token_urlsafe(24)
    return session["csrf"]


def _token_refusal():
    """The answer to an API client without a valid admin token (None: it has one)."""
    status = admin_status(request, state().settings)
    return None if status == 200 else bad_request(why_refused(status, "admin token required (Authorization: Bearer ...)"),
                                                  status)


def _post_status() -> int:
    """200 for a POST with the admin token, or with the session cookie and its CSRF token; else 401 (429
    for a wrong token from a client over its guesses: :func:`~ml_backend.auth.admin_status`)."""
    status = admin_status(request, state().settings)
    if status != 401:
        return status
    sent = request.form.get("csrf", "")
    return 200 if _logged_in() and bool(sent) and hmac.compare_digest(sent, session.get("csrf", "")) else 401


@bp.before_request
def _enabled():
    if not state().settings.admin_token:
        abort(404)  # off unless LABELER_ADMIN_TOKEN is set


def report() -> dict:
    """What the page shows: the backend's metrics report with every detail, and per project ``finishing``."""
    r = metrics_report(details=True)
    for p, info in r["projects"].items():
        info["finishing"] = finishing(p)
    return r


def finishing(project: str) -> dict:
    """Forecast, plateau and cost to finish (defaults of ``labeler status``); ``{"error"}`` where they fail,
    so one odd project does not take the page down."""
    from labeler.learning.finishing import finishing_report

    st = state()
    try:
        return finishing_report(st.predictor.registry, st.settings.model_dir, project)
    except (LabelerError, ValueError, ArithmeticError, OSError) as exc:
        log.exception("project %s: the finishing report failed", project)
        return {"error": f"{type(exc).__name__}: {exc}"}


@bp.get("")
@bp.get("/")
def index():
    if not wants_html():
        if (refused := _token_refusal()) is not None:
            return refused
        return jsonify(report())
    if not _logged_in():
        return render_template_string(_LOGIN, error=None, csrf=_csrf_token()), 401
    r = report()
    plots = {p: learning_curve_svg(info["versions"]) for p, info in r["projects"].items()}
    finish_plots = {p: finishing_svg(info["finishing"]) for p, info in r["projects"].items()}
    active = any(info["job"].get("status") in {"queued", "running"}
                 or info["preannotation"].get("status") in {"queued", "running"} for info in r["projects"].values())
    return render_template_string(_PAGE, r=r, plots=plots, finish_plots=finish_plots, csrf=_csrf_token(),
                                  message=session.pop("message", None),
                                  fmt=_fmt, when=_when, zip=zip, now=time.time(), active=active)


@bp.post("/login")
def login():
    sent = request.form.get("csrf", "")
    if not sent or not hmac.compare_digest(sent, session.get("csrf", "")):
        return render_template_string(_LOGIN, error="the form expired; try again", csrf=_csrf_token()), 400
    status = login_status(request, request.form.get("token", ""), state().settings)
    if status != 200:
        error = "too many wrong tokens; wait a minute" if status == 429 else "wrong admin token"
        return render_template_string(_LOGIN, error=error, csrf=_csrf_token()), status
    session.clear()
    session["admin"] = _SESSION_MARK
    return redirect(url_for("dashboard.index"), 303)


@bp.post("/logout")
def logout():
    if _post_status() == 200:
        session.clear()
    return redirect(url_for("dashboard.index"), 303)


def _done(message: str, body: dict, status: int = 200):
    if wants_html() or request.form:
        session["message"] = message
        return redirect(url_for("dashboard.index"), 303)
    return jsonify({"status": "ok", **body}), status


@bp.post("/projects/<project>/promote")
def promote(project: str):
    """Serve ``version`` (a form field or JSON key; :func:`requested_version`)."""
    if (status := _post_status()) != 200:
        return bad_request(why_refused(status, "admin token or a logged-in session with its form required"), status)
    version = requested_version(request.form if request.form else request.get_json(silent=True))
    project = check_project(project)
    state().serve(project, version)
    return _done(f"project {project} now serves {version or 'the zero-shot model'}", {"serving": version or "zero-shot"})


@bp.post("/projects/<project>/train")
def train(project: str):
    if (status := _post_status()) != 200:
        return bad_request(why_refused(status, "admin token or a logged-in session with its form required"), status)
    job = state().jobs.submit(check_project(project), trigger="admin page")
    return _done(f"training of project {project}: {job.get('status')}", {"job": job}, 202)


@bp.get("/projects/<project>/annotators")
def annotators(project: str):
    """The annotators of a project: table and plot for a logged-in browser, the admin JSON
    (``/admin/projects/<p>/annotators``, the same report) for API clients."""
    from .admin import annotator_report

    if not wants_html():
        if (refused := _token_refusal()) is not None:
            return refused
        report, why = annotator_report(project)
        return (jsonify(report), 200) if report is not None else (jsonify({"status": "error", "error": why}), 409)
    if not _logged_in():
        return render_template_string(_LOGIN, error=None, csrf=_csrf_token()), 401
    report, why = annotator_report(project)
    return render_template_string(_ANNOTATORS, p=check_project(project), r=report or {}, error=why,
                                  plot=annotators_svg(report or {}), fmt=_fmt), 200 if report is not None else 409


# -- rendering ----------------------------------------------------------------------------------------

def _fmt(value, digits: int = 4) -> str:
    return f"{value:.{digits}f}" if isinstance(value, (int, float)) and not math.isnan(value) else "–"


def _when(ts) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts)) if isinstance(ts, (int, float)) else "–"


def learning_curve_svg(versions: list[dict]) -> str | None:
    """Inline SVG: held-out accuracy and EER of each version against its number of training labels,
    with the zero-shot model's accuracy on the same items. None with no versions."""
    rows = [v for v in versions if v.get("metrics")]
    if not rows:
        return None
    x = [v.get("n_train") or 0 for v in rows]
    fig, ax = _figure()
    ax.plot(x, [v["metrics"].get("accuracy") for v in rows], "o-", label="accuracy")
    if any(isinstance(v["metrics"].get("eer"), float) for v in rows):
        ax.plot(x, [v["metrics"].get("eer") for v in rows], "s-", label="EER")
    if any(v.get("zeroshot_metrics") for v in rows):
        # nan where a version has none: what matplotlib makes of None, but typed
        ax.plot(x, [v["zeroshot_metrics"].get("accuracy", math.nan) if v.get("zeroshot_metrics") else math.nan
                    for v in rows], "x--",
                label="zero-shot accuracy (same items)")
    for xi, v in zip(x, rows):
        ax.annotate(v["version"].split("-")[0], (xi, v["metrics"].get("accuracy") or 0), fontsize=7,
                    textcoords="offset points", xytext=(0, 5), ha="center")
    ax.set_xlabel("labels the version trained on")
    ax.set_ylim(0, 1.05)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title("held-out metrics per version", fontsize=10)
    return _svg(fig)


def _figure():
    headless_matplotlib()
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 3.2), dpi=100)
    return fig, fig.add_subplot()


def _svg(fig) -> str:
    fig.tight_layout()
    buf = io.StringIO()
    fig.savefig(buf, format="svg")
    svg = buf.getvalue()
    return svg[svg.index("<svg"):]  # drop the XML prolog: it is embedded in HTML


def finishing_svg(fin: dict) -> str | None:
    """Inline SVG: each version's held-out error against its training labels, the fitted learning curve
    extended to the forecast with its bootstrap band, and the target. None with no fitted curve."""
    band = (fin.get("forecast") or {}).get("band") or {}
    if not band.get("n"):
        return None
    fig, ax = _figure()
    ax.fill_between(band["n"], band["lo"], band["hi"], alpha=0.2, label="90 % band (bootstrap)")
    ax.plot(band["n"], band["mid"], "-", label=f"fit: {fin['forecast']['curve']['a']:.3g} n^-{fin['forecast']['curve']['b']:.2f}"
            f" + {fin['forecast']['curve']['c']:.3f}")
    ax.plot([p["labels"] for p in fin["points"]], [p["error"] for p in fin["points"]], "o", label="versions (held out)")
    ax.axhline(fin["target_error"], color="k", ls="--", lw=1, label=f"target: {fin['metric_name']} {fin['target']:g}")
    needed = fin["forecast"].get("needed")
    if needed is not None and needed <= band["n"][-1]:
        ax.axvline(needed, color="k", ls=":", lw=1)
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(ScalarFormatter())  # 200, not 2 x 10^2
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("training labels")
    ax.set_ylabel(f"held-out error ({'EER' if fin['lower_is_better'] else '1 - ' + fin['metric_name']})")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper right")
    ax.set_title("learning curve and forecast", fontsize=10)
    return _svg(fig)


def _interval(x: dict | None) -> tuple[float, float, float] | None:
    """(rate, low, high) of a rate with its interval, None where there is none."""
    return None if not x or x.get("rate") is None else (x["rate"], x["low"], x["high"])


def annotators_svg(report: dict) -> str | None:
    """Inline SVG: per annotator, the estimated accuracy with its 95 % interval, and beside it the accuracy
    on blind control tasks and on pre-annotated ones (automation bias). None with no annotator."""
    rows = report.get("annotators") or []
    if not rows:
        return None
    series = [("accuracy (honeypots or consensus model)", "o",
               lambda r: None if r["accuracy"] is None else (r["accuracy"], r["accuracy_low"], r["accuracy_high"])),
              ("blind controls", "s", lambda r: _interval(r["automation_bias"]["blind"])),
              ("pre-annotated", "^", lambda r: _interval(r["automation_bias"]["preannotated"]))]
    fig, ax = _figure()
    fig.set_size_inches(6.4, 1.2 + 0.45 * len(rows))
    for k, (name, marker, get) in enumerate(series):
        pts = [(i, v) for i, r in enumerate(rows) if (v := get(r)) is not None]
        if pts:
            x = [v[0] for _, v in pts]
            ax.errorbar(x, [i + (k - 1) * 0.22 for i, _ in pts], fmt=marker, capsize=3, label=name,
                        xerr=[[v[0] - v[1] for _, v in pts], [v[2] - v[0] for _, v in pts]])
    ax.set_yticks(range(len(rows)), [r["annotator"] for r in rows], fontsize=8)
    ax.set_ylim(len(rows) - 0.5, -0.5)
    ax.set_xlim(0, 1.02)
    ax.set_xlabel("accuracy (95 % interval)")
    ax.grid(alpha=0.3, axis="x")
    ax.legend(fontsize=7, loc="lower left")
    ax.set_title("annotators: accuracy, blind vs pre-annotated", fontsize=10)
    return _svg(fig)


_STYLE = """<style>
body{font-family:system-ui,sans-serif;margin:1.5em 2em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1em}td,th{padding:3px 9px;border-bottom:1px solid #ddd;text-align:right}
th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}.serving{background:#eef7ee;font-weight:600}
.msg{background:#eef;padding:.5em 1em}.failed{color:#b00}form.inline{display:inline}
section{border-top:2px solid #ccc;margin-top:1.5em}.small{color:#666;font-size:.9em}
</style>"""

_LOGIN = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>labeler admin: log in</title>""" + _STYLE + """
</head><body><h1>labeler admin</h1>
{% if error %}<p class="failed">{{ error }}</p>{% endif %}
<form method="post" action="{{ url_for('dashboard.login') }}">
<input type="hidden" name="csrf" value="{{ csrf }}">
<label>Admin token (LABELER_ADMIN_TOKEN) <input type="password" name="token" autofocus></label>
<button type="submit">Log in</button></form></body></html>"""

_PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>labeler admin</title>
{% if active %}<meta http-equiv="refresh" content="5">{% endif %}""" + _STYLE + """
</head><body><h1>labeler admin</h1>
<p class="small">zero-shot model {{ r.zeroshot_model }} · up {{ r.uptime_s }} s ·
/predict latency p50 {{ fmt(r.predict_latency_s.p50, 3) }} s, p99 {{ fmt(r.predict_latency_s.p99, 3) }} s
({{ r.predict_latency_s.n }} requests) · <a href="{{ url_for('dashboard.index') }}">refresh</a>
<form class="inline" method="post" action="{{ url_for('dashboard.logout') }}"><input type="hidden" name="csrf" value="{{ csrf }}"><button>log out</button></form></p>
{% if message %}<p class="msg">{{ message }}</p>{% endif %}
{% if not r.projects %}<p>No project has trained yet: versions appear here after the first training
(Label Studio: Settings → Model → Start Training).</p>{% endif %}
{% for p, info in r.projects.items() %}{% set job = info.job %}
<section id="project-{{ p }}"><h2>Project {{ p }}: serving <span class="serving-name">{{ info.serving }}</span></h2>
<p>Training job: <b class="{{ 'failed' if job.status == 'failed' }}">{{ job.status or 'none' }}</b>
{% if job.status in ('queued', 'running') and job.started %} for {{ (now - job.started)|round|int }} s (this page refreshes itself){% endif %}
{% if job.step %} · step: {{ job.step }}{% endif %}
{% if job.trigger %} · trigger: {{ job.trigger }}{% endif %}
{% if job.finished %} · finished {{ when(job.finished) }}{% endif %}
{% if job.version %} · last result: {{ job.version }} {{ 'promoted' if job.promoted else 'not promoted' }}{% if job.reason %} ({{ job.reason }}){% endif %}{% endif %}
{% if job.error %}<br><span class="failed">Last failure: {{ job.error }}</span>{% endif %}
<form class="inline" method="post" action="{{ url_for('dashboard.train', project=p) }}"><input type="hidden" name="csrf" value="{{ csrf }}"> <button>Train now</button></form></p>
{% set b = info.preannotation %}{% if b.status and b.status != 'none' %}{% set pg = b.progress or {} %}
<p class="preannotation">Background pre-annotation: <b class="{{ 'failed' if b.status == 'failed' }}">{{ b.status }}</b>
{% if pg %} · {{ '{:,}'.format(pg.done) }} of {{ '{:,}'.format(pg.total) }} tasks
<progress max="{{ pg.total or 1 }}" value="{{ pg.done }}"></progress> · <span class="estimate">estimate: {{ pg.estimate }}</span>
{% elif b.requested %} · {{ '{:,}'.format(b.requested) }} tasks asked for{% endif %}
{% if b.status == 'done' %} · {{ b.predicted }} predicted, {{ b.failed }} failed, finished {{ when(b.finished) }}{% endif %}
{% if b.trigger %} · trigger: {{ b.trigger }}{% endif %}
{% if b.error %}<br><span class="failed">Failure: {{ b.error }}</span>{% endif %}</p>{% endif %}
<table class="versions"><tr><th>version</th><th>created</th><th>labels</th><th>evaluated on</th><th>accuracy</th>
<th>EER</th><th>ROC AUC</th><th>macro-F1</th><th>zero-shot accuracy<br>(same items)</th><th>per class: precision / recall / F1</th><th></th></tr>
{% for v in info.versions|reverse %}{% set m = v.metrics or {} %}
<tr class="{{ 'serving' if v.version == info.serving }}"><td>{{ v.version }}{% if v.version == info.serving %} (serving){% endif %}</td>
<td>{{ when(v.created) }}</td><td>{{ v.n_train }}</td><td>{{ v.n_eval }} {{ v.evaluation or '' }}</td>
<td>{{ fmt(m.accuracy) }}</td><td>{{ fmt(m.eer if m.eer is defined else m.eer_macro) }}</td>
<td>{{ fmt(m.roc_auc if m.roc_auc is defined else m.roc_auc_macro) }}</td><td>{{ fmt(m.macro_f1) }}</td>
<td>{{ fmt((v.zeroshot_metrics or {}).accuracy) }}</td>
<td>{% for c, pc in (m.per_class or {}).items() %}{{ c }}: {{ fmt(pc.precision, 2) }} / {{ fmt(pc.recall, 2) }} / {{ fmt(pc.f1, 2) }}{% if not loop.last %}<br>{% endif %}{% endfor %}</td>
<td>{% if v.version != info.serving %}<form class="inline" method="post" action="{{ url_for('dashboard.promote', project=p) }}">
<input type="hidden" name="csrf" value="{{ csrf }}"><input type="hidden" name="version" value="{{ v.version }}">
<button>serve this version</button></form>{% endif %}</td></tr>{% endfor %}
<tr class="{{ 'serving' if info.serving == 'zero-shot' }}"><td>zero-shot{% if info.serving == 'zero-shot' %} (serving){% endif %}</td><td colspan="9"></td>
<td>{% if info.serving != 'zero-shot' %}<form class="inline" method="post" action="{{ url_for('dashboard.promote', project=p) }}">
<input type="hidden" name="csrf" value="{{ csrf }}"><input type="hidden" name="version" value="zero-shot">
<button>roll back to zero-shot</button></form>{% endif %}</td></tr></table>
{% if plots[p] %}<div class="learning-curve">{{ plots[p]|safe }}</div>{% endif %}
<p><a href="{{ url_for('dashboard.annotators', project=p) }}">Annotators</a>: accuracy, agreement, speed and
automation bias of the people labelling project {{ p }}.</p>
{% set fin = info.finishing %}<h3>Finishing</h3>
{% if fin.error %}<p class="failed">The finishing report failed: {{ fin.error }}</p>{% else %}
<ul class="finishing"><li>Forecast ({{ fin.metric_name }}): {{ fin.forecast.line }}</li>
<li>Plateau: {{ fin.plateau.line }}</li><li>Cost to finish: {{ fin.cost.line }}</li></ul>
{% if finish_plots[p] %}<div class="forecast-curve">{{ finish_plots[p]|safe }}</div>{% endif %}
<p class="small">The plot counts training labels; the forecast counts labels to annotate (under the hold-out, one in
five is held out). Other targets and audit levels: <code>labeler status --project {{ p }} --target X --eps E</code>.</p>{% endif %}
{% set newest = (info.versions|selectattr('version', 'equalto', info.serving)|list or info.versions[-1:]) %}
{% for v in newest %}{% set m = v.metrics or {} %}{% if m.confusion_matrix %}
<h3>Confusion matrix of {{ v.version }} (rows: true class, columns: predicted)</h3>
<table class="confusion"><tr><th></th>{% for c in (m.per_class or {}).keys() %}<th>{{ c }}</th>{% endfor %}</tr>
{% for c, row in zip((m.per_class or {}).keys(), m.confusion_matrix) %}<tr><th>{{ c }}</th>{% for n in row %}<td>{{ n }}</td>{% endfor %}</tr>{% endfor %}
</table>{% endif %}{% endfor %}</section>
{% endfor %}</body></html>"""

_ANNOTATORS = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>labeler admin: annotators of project {{ p }}</title>
""" + _STYLE + """</head><body><h1>Annotators of project {{ p }}</h1>
<p class="small"><a href="{{ url_for('dashboard.index') }}">admin page</a> · the same data as JSON:
<code>GET /admin/projects/{{ p }}/annotators</code> or <code>labeler annotators --project {{ p }} --json</code></p>
{% if error %}<p class="failed">{{ error }}</p>{% else %}
<table class="annotators"><tr><th>annotator</th><th>labels</th><th>honeypots</th><th>accuracy</th><th>95 % interval</th>
<th>from</th><th>median s</th><th>blind controls</th><th>pre-annotated</th><th>took a wrong preselected answer</th><th>Cohen's kappa</th></tr>
{% for a in r.annotators %}{% set b = a.automation_bias %}
<tr><td>{{ a.annotator }}</td><td>{{ a.labels }}</td><td>{{ a.honeypots }}</td><td>{{ fmt(a.accuracy, 3) }}</td>
<td>{% if a.accuracy is not none %}{{ fmt(a.accuracy_low, 3) }}–{{ fmt(a.accuracy_high, 3) }}{% else %}–{% endif %}</td>
<td>{{ a.accuracy_source or '–' }}</td><td>{{ fmt(a.median_lead_time_s, 1) }}</td>
{% for x in (b.blind, b.preannotated, b.accepted_wrong) %}<td>{% if x.rate is not none %}{{ fmt(x.rate, 2) }} of {{ x.n }}{% else %}–{% endif %}</td>{% endfor %}
<td>{% for o, k in a.kappa.items() %}{{ o }} {{ fmt(k, 2) }}{% if not loop.last %}<br>{% endif %}{% endfor %}</td></tr>{% endfor %}
</table>
<p>Krippendorff's alpha: {{ fmt(r.krippendorff_alpha, 3) }} · consensus: {{ r.method }} · {{ r.tasks }} tasks,
{{ r.tasks_with_overlap }} with two labels or more, {{ r.honeypot_tasks }} honeypots, {{ r.control_tasks }} blind controls
{% if r.model_accuracy is not none %} · the classifier voted too (out-of-fold, last training): estimated accuracy {{ fmt(r.model_accuracy, 3) }}{% endif %}</p>
{% if plot %}<div class="annotator-plot">{{ plot|safe }}</div>{% endif %}
{% if r.unavailable %}<h3>Not available</h3><ul class="unavailable">{% for u in r.unavailable %}<li>{{ u }}</li>{% endfor %}</ul>{% endif %}
{% endif %}</body></html>"""
