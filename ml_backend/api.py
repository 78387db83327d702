"""The routes Label Studio calls."""

from __future__ import annotations

import logging
import time

from flask import Blueprint, current_app, jsonify, render_template_string, request

from labeler.errors import LabelerError
from labeler.labelconfig import LabelConfigError, parse_label_config
from labeler.models.predictor import project_key
from labeler.studio.team import is_control

from .auth import admin_ok, webhook_ok
from .queuehook import after_predict
from .state import BackendState

log = logging.getLogger(__name__)
bp = Blueprint("api", __name__)
PREDICT_QUEUE_WAIT_S = 10.0


def state() -> BackendState:
    return current_app.extensions["labeler"]


def bad_request(message: str, status: int = 400):
    return jsonify({"status": "error", "error": message}), status


def _json_object() -> dict | None:
    data = request.get_json(silent=True)
    return data if isinstance(data, dict) else None


def wants_html() -> bool:
    """True when the client names text/html itself and ranks it at least as high as JSON.

    Werkzeug's ``accept_mimetypes.best`` picks Chromium's
    ``application/signed-exchange;v=b3`` (more specific, so first) over
    ``text/html``; an API client's ``*/*`` names no type and gets JSON.
    """
    accept = request.accept_mimetypes
    named = {m.lower() for m, q in accept if q > 0}
    return "text/html" in named and accept["text/html"] >= accept["application/json"]


@bp.get("/health")
@bp.get("/")
def health():
    """Cheap: Label Studio calls it before every predict (1 s timeout); never waits on a lock."""
    p = state().predictor
    body = {"status": "UP", "model_class": "labeler", "model_ready": p.ready}
    if p.scorer_error:
        body["model_error"] = "the zero-shot model could not be loaded (see the backend log)"
    return jsonify(body)


@bp.post("/setup")
def setup():
    data = _json_object()
    if data is None:
        return bad_request("expected a JSON object")
    for key in ("hostname", "access_token"):
        if data.get(key) is not None and not isinstance(data[key], str):
            return bad_request(f"{key} must be a string")
    try:
        project = project_key(data.get("project"))
        config = parse_label_config(data.get("schema") or "")
    except LabelConfigError as exc:
        return bad_request(f"labeler cannot serve this project: {exc}")
    except ValueError as exc:
        return bad_request(str(exc))
    st = state()
    st.setup(project, data.get("hostname"), data.get("access_token"), own_url=request.url_root)
    if not st.predictor.ready:  # /setup has 3 s: do not wait for the model here
        version = st.predictor.registry.current(project) or "loading"
    else:
        version = st.predictor.model_version(project, config)
    return jsonify({"model_version": version})


@bp.post("/predict")
def predict():
    t0 = time.perf_counter()
    data = _json_object()
    if data is None or not isinstance(data.get("tasks"), list):
        return bad_request('expected {"tasks": [...], "label_config": "...", "project": "..."}')
    try:
        project = project_key(data.get("project"))
        config = parse_label_config(data.get("label_config") or "")
    except ValueError as exc:  # LabelConfigError included
        return bad_request(str(exc))
    st = state()
    # What fits one request is predicted now; the rest (a big "Retrieve predictions" selection) becomes a
    # background pre-annotation, and its entries are empty lists: Label Studio then stores nothing for them.
    tasks, rest = data["tasks"][:st.settings.max_tasks_per_predict], data["tasks"][st.settings.max_tasks_per_predict:]
    # A bounded number of predictions at once, so threads stay free for /health.
    if not st.predict_slots.acquire(timeout=PREDICT_QUEUE_WAIT_S):
        st.counters["predict_busy"] += 1
        return bad_request("busy: too many predictions at once, retry", 503)
    # Blind control tasks (LABELER_CONTROL_RATE) get an empty entry, as deferred ones do: Label Studio stores
    # no prediction, so people label them with nothing preselected (automation bias is measured on them).
    blind = [isinstance(t, dict) and isinstance(t.get("id"), int) and is_control(t["id"], st.settings.control_rate)
             for t in tasks]
    try:
        results = st.predictor.predictions([t for t, b in zip(tasks, blind) if not b], config, project,
                                           st.connection(project))
    except ValueError as exc:
        return bad_request(str(exc), 409)
    finally:
        st.predict_slots.release()
    st.counters["tasks_blind_controls"] += sum(blind)
    tasks = [t for t, b in zip(tasks, blind) if not b]
    st.counters["predict_requests"] += 1
    st.counters["tasks_predicted"] += sum(1 for r in results if r["result"])
    st.counters["tasks_failed"] += sum(1 for r in results if not r["result"])
    st.latencies.append(time.perf_counter() - t0)
    if results:
        st.sync_version(project, results[0]["model_version"])
    after_predict(st, project, tasks, config, results)  # the "Next to label" tab, in the background
    if rest:
        st.preannotate_later(project, rest)
    answers = iter(results)
    return jsonify({"results": [[] if b else next(answers) for b in blind] + [[] for _ in rest]})


@bp.post("/webhook")
def webhook():
    """Answers at once (Label Studio waits 1 s); training runs in the background."""
    st = state()
    if not webhook_ok(request, st.settings):
        return bad_request("webhook credentials required (basic auth or X-Labeler-Webhook-Secret)", 401)
    data = _json_object()
    if data is None or not isinstance(data.get("action"), str):
        return bad_request('expected {"action": ..., "project": {...}}')
    project = data.get("project")
    try:
        pid = project_key(project.get("id") if isinstance(project, dict) else None)
    except ValueError:
        return jsonify({"status": "ignored", "reason": "no valid project id"}), 200
    if not st.known(pid):
        return jsonify({"status": "ignored", "reason": f"project {pid} was never set up with this backend"}), 200
    action = data["action"]
    if action == "START_TRAINING":
        return jsonify({"status": "ok", "job": _short_job(st.jobs.submit(pid, trigger="START_TRAINING"))}), 201
    if action in {"ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_CREATED"}:
        st.train_every.annotation_event(pid)
    return jsonify({"status": "ok"}), 200


def _short_job(job: dict) -> str:
    """Label Studio stores ``response["job"]`` in a 128-character column: hand it a short id."""
    return str(job.get("job_id") or job.get("status") or "queued")[:64]


@bp.get("/versions")
def versions():
    st = state()
    project = request.args.get("project")
    try:
        projects = [project_key(project)] if project else st.predictor.registry.projects()
    except ValueError as exc:
        return bad_request(str(exc))
    names = [m["version"] for p in projects for m in st.predictor.registry.list(p)]
    return jsonify({"versions": names})


def _percentile(values: list[float], q: float) -> float | None:
    return round(values[min(len(values) - 1, int(q * len(values)))], 4) if values else None


def metrics_report(details: bool) -> dict:
    """Serving versions, job states and metrics; per-file errors and failure texts only with ``details``."""
    st = state()
    reg = st.predictor.registry
    lat = sorted(st.latencies)
    projects = {}
    for p in reg.projects():
        try:
            job = st.jobs.state(p)
        except LabelerError as exc:  # e.g. the Ray job server is down: the page that shows it stays up
            job = {"status": "unknown", "error": str(exc)}
        versions = reg.list(p)
        versions = [{k: v for k, v in m.items() if k != "trained_tasks"} for m in versions]
        if not details:
            job = {k: job.get(k) for k in ("status", "step", "version", "promoted", "trigger", "finished")}
            versions = [{k: v for k, v in m.items() if k not in {"unreadable_images", "prompts"}} for m in versions]
        bulk = st.preannotations.state(p)  # a background pre-annotation: progress, rate, time left
        if not details:
            bulk = {k: v for k, v in bulk.items() if k != "error"}
        projects[p] = {"serving": reg.current(p) or "zero-shot", "job": job, "versions": versions,
                       "preannotation": bulk}
    scorer = st.predictor.scorer if st.predictor.ready else None  # never wait for a loading model here
    return {"uptime_s": round(time.time() - st.started, 1), "counters": st.counters,
            "predict_latency_s": {"p50": _percentile(lat, 0.5), "p99": _percentile(lat, 0.99), "n": len(lat)},
            "zeroshot_model": st.settings.zeroshot_model,
            # how the vision tower computes (fp32, bf16, int8) and its measured top-1 agreement with fp32
            "zeroshot_precision": scorer.precision.as_dict() if scorer is not None else None,
            "projects": projects}


_PAGE = """<!doctype html><title>labeler metrics</title>
<style>body{font-family:sans-serif;margin:2em}td,th{padding:2px 8px;border-bottom:1px solid #ddd}</style>
<h1>labeler</h1><p>uptime {{r.uptime_s}} s · {{r.counters}} · /predict latency {{r.predict_latency_s}}</p>
{% for p, info in r.projects.items() %}<h2>Project {{p}}: serving {{info.serving}}</h2>
<p>job: {{info.job}}</p>{% set b = info.preannotation %}{% if b.status != 'none' %}<p>pre-annotation:
{{b.status}}{% if b.progress %}, {{b.progress.done}} of {{b.progress.total}}; {{b.progress.estimate}}{% endif %}</p>{% endif %}
<table><tr><th>version</th><th>labels</th><th>accuracy</th><th>EER</th>
<th>ROC AUC</th><th>zero-shot accuracy (same items)</th><th>promoted</th></tr>
{% for v in info.versions %}<tr><td>{{v.version}}</td><td>{{v.n_train}}</td>
<td>{{'%.4f'|format(v.metrics.accuracy) if v.metrics and v.metrics.accuracy is number}}</td>
<td>{{'%.4f'|format(v.metrics.eer) if v.metrics and v.metrics.eer is number}}</td>
<td>{{'%.4f'|format(v.metrics.roc_auc) if v.metrics and v.metrics.roc_auc is number}}</td>
<td>{{'%.4f'|format(v.zeroshot_metrics.accuracy) if v.zeroshot_metrics}}</td><td>{{v.promoted}}</td></tr>
{% endfor %}</table>{% endfor %}"""


@bp.get("/metrics")
def metrics():
    report = metrics_report(details=admin_ok(request, state().settings))
    if wants_html():
        return render_template_string(_PAGE, r=report)
    return jsonify(report)
