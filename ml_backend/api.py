"""The routes Label Studio calls."""

from __future__ import annotations

import logging
import time

from flask import Blueprint, current_app, jsonify, render_template_string, request

from labeler.labelconfig import LabelConfigError, parse_label_config
from labeler.predictor import project_key

from .state import BackendState

log = logging.getLogger(__name__)
bp = Blueprint("api", __name__)


def state() -> BackendState:
    return current_app.extensions["labeler"]


def bad_request(message: str, status: int = 400):
    return jsonify({"status": "error", "error": message}), status


@bp.get("/health")
@bp.get("/")
def health():
    """Cheap: Label Studio calls it before every predict (1 s timeout)."""
    p = state().predictor
    body = {"status": "UP", "model_class": "labeler", "model_ready": p.ready}
    if p.scorer_error:
        body["model_error"] = p.scorer_error
    return jsonify(body)


@bp.post("/setup")
def setup():
    data = request.get_json(silent=True)
    if not isinstance(data, dict):
        return bad_request("expected a JSON object")
    try:
        config = parse_label_config(data.get("schema") or "")
    except LabelConfigError as exc:
        return bad_request(f"labeler cannot serve this project: {exc}")
    project = project_key(data.get("project"))
    st = state()
    st.remember(project, data.get("hostname"), data.get("access_token"))
    if not st.predictor.ready:  # /setup has 3 s: do not wait for the model here
        version = st.predictor.registry.current(project) or "loading"
    else:
        version = st.predictor.model_version(project, config)
    return jsonify({"model_version": version})


@bp.post("/predict")
def predict():
    t0 = time.perf_counter()
    data = request.get_json(silent=True)
    if not isinstance(data, dict) or not isinstance(data.get("tasks"), list):
        return bad_request('expected {"tasks": [...], "label_config": "..."}')
    tasks = data["tasks"]
    if not all(isinstance(t, dict) for t in tasks):
        return bad_request("every task must be a JSON object")
    try:
        config = parse_label_config(data.get("label_config") or "")
    except LabelConfigError as exc:
        return bad_request(str(exc))
    st = state()
    project = project_key(data.get("project"))
    try:
        results = st.predictor.predictions(tasks, config, project, st.connection(project))
    except ValueError as exc:
        return bad_request(str(exc), 409)
    st.counters["predict_requests"] += 1
    st.counters["tasks_predicted"] += sum(1 for r in results if r["result"])
    st.counters["tasks_failed"] += sum(1 for r in results if not r["result"])
    st.latencies.append(time.perf_counter() - t0)
    if results:
        st.sync_version(project, results[0]["model_version"])
    return jsonify({"results": results})


@bp.post("/webhook")
def webhook():
    """Answers at once (Label Studio waits 1 s); training runs in the background."""
    data = request.get_json(silent=True)
    if not isinstance(data, dict) or "action" not in data:
        return bad_request('expected {"action": ..., "project": {...}}')
    action = data["action"]
    project = data.get("project") or {}
    pid = str(project.get("id")) if isinstance(project, dict) and project.get("id") else None
    if pid is None:
        return jsonify({"status": "ignored", "reason": "no project id"}), 200
    st = state()
    if action == "START_TRAINING":
        return jsonify({"status": "ok", "job": st.jobs.submit(pid, trigger="START_TRAINING")}), 201
    if action in {"ANNOTATION_CREATED", "ANNOTATION_UPDATED"} and st.settings.train_every > 0:
        n = st.annotation_events.get(pid, 0) + 1
        st.annotation_events[pid] = n
        if n % st.settings.train_every == 0:
            return jsonify({"status": "ok", "job": st.jobs.submit(pid, trigger=f"{n} annotation events")}), 201
    return jsonify({"status": "ok"}), 200


@bp.get("/versions")
def versions():
    st = state()
    project = request.args.get("project")
    projects = [project_key(project)] if project else st.predictor.registry.projects()
    names = [m["version"] for p in projects for m in st.predictor.registry.list(p)]
    return jsonify({"versions": names})


def metrics_report() -> dict:
    st = state()
    reg = st.predictor.registry
    lat = sorted(st.latencies)
    pct = lambda q: round(lat[min(len(lat) - 1, int(q * len(lat)))], 4) if lat else None  # noqa: E731
    projects = {}
    for p in reg.projects():
        projects[p] = {"serving": reg.current(p) or "zero-shot", "job": st.jobs.state(p),
                       "versions": reg.list(p)}
    return {"uptime_s": round(time.time() - st.started, 1), "counters": st.counters,
            "predict_latency_s": {"p50": pct(0.5), "p99": pct(0.99), "n": len(lat)},
            "zeroshot_model": st.settings.zeroshot_model, "projects": projects}


_PAGE = """<!doctype html><title>labeler metrics</title>
<style>body{font-family:sans-serif;margin:2em}td,th{padding:2px 8px;border-bottom:1px solid #ddd}</style>
<h1>labeler</h1><p>uptime {{r.uptime_s}} s · {{r.counters}} · /predict latency {{r.predict_latency_s}}</p>
{% for p, info in r.projects.items() %}<h2>Project {{p}}: serving {{info.serving}}</h2>
<p>job: {{info.job}}</p><table><tr><th>version</th><th>labels</th><th>accuracy</th><th>EER</th>
<th>ROC AUC</th><th>zero-shot accuracy (same items)</th><th>promoted</th></tr>
{% for v in info.versions %}<tr><td>{{v.version}}</td><td>{{v.n_train}}</td>
<td>{{'%.4f'|format(v.metrics.accuracy) if v.metrics and v.metrics.accuracy is number}}</td>
<td>{{'%.4f'|format(v.metrics.eer) if v.metrics and v.metrics.eer is number}}</td>
<td>{{'%.4f'|format(v.metrics.roc_auc) if v.metrics and v.metrics.roc_auc is number}}</td>
<td>{{'%.4f'|format(v.zeroshot_metrics.accuracy) if v.zeroshot_metrics}}</td><td>{{v.promoted}}</td></tr>
{% endfor %}</table>{% endfor %}"""


@bp.get("/metrics")
def metrics():
    report = metrics_report()
    if request.accept_mimetypes.best == "text/html":
        return render_template_string(_PAGE, r=report)
    return jsonify(report)
