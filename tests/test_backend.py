"""The Flask app's own behaviour, with Flask's test client (HTTP with Label Studio: the integration tests)."""

from __future__ import annotations

import base64

import pytest

from labeler.config import Settings
from labeler.dev.demo import template
from labeler.models.registry import Registry
from ml_backend import create_app


@pytest.fixture()
def client(tmp_path):
    app = create_app(Settings(model_dir=tmp_path, zeroshot_model=None, train_every=3, admin_token="t0k",
                              basic_auth_user="ls", basic_auth_pass="pw"), load_in_background=False)
    return app.test_client()


AUTH = {"Authorization": "Basic " + base64.b64encode(b"ls:pw").decode()}


def test_basic_auth_on_every_route_label_studio_calls(client):
    setup = {"schema": template("binary"), "project": "1.1"}
    assert client.post("/setup", json=setup).status_code == 401
    assert client.post("/setup", json=setup, headers=AUTH).status_code == 200
    event = {"action": "PROJECT_UPDATED", "project": {"id": 1}}
    assert client.post("/webhook", json=event).status_code == 401
    assert client.post("/webhook", json=event, headers=AUTH).status_code == 200
    for bad in ("Basic abc", "Basic ", "Basic " + base64.b64encode(b"ls:wrong").decode(), "Bearer x", "garbage"):
        assert client.post("/setup", json=setup, headers={"Authorization": bad}).status_code == 401, bad
    assert client.get("/health").status_code == 200  # tells nothing, changes nothing


def test_webhook_secret_header(tmp_path):
    app = create_app(Settings(model_dir=tmp_path, zeroshot_model=None, webhook_secret="s3cret"),
                     load_in_background=False)
    c = app.test_client()
    event = {"action": "START_TRAINING", "project": {"id": 1}}
    assert c.post("/webhook", json=event).status_code == 401
    assert c.post("/webhook", json=event, headers={"X-Labeler-Webhook-Secret": "nope"}).status_code == 401
    r = c.post("/webhook", json=event, headers={"X-Labeler-Webhook-Secret": "s3cret"})
    assert r.status_code == 200 and r.json["status"] == "ignored"  # project 1 was never set up
    assert not (tmp_path / "projects" / "1").exists()


def test_malformed_requests_are_400_not_500(client):
    for body in ([1, 2], "text", 3, None, {"tasks": "x"}, {"tasks": [], "project": "../x"},
                 {"tasks": [], "project": "/abs/path", "label_config": template("binary")}):
        r = client.post("/predict", json=body, headers=AUTH)
        assert r.status_code == 400 and r.json["status"] == "error", body
    for body in ({"schema": template("binary"), "project": "1", "hostname": 5},
                 {"schema": template("binary"), "project": "1", "access_token": ["x"]},
                 {"schema": template("binary"), "project": "../1"}):
        assert client.post("/setup", json=body, headers=AUTH).status_code == 400, body
    assert client.post("/predict", data="{", content_type="application/json", headers=AUTH).status_code == 400


def test_no_model_gives_empty_results_with_a_reason(client):
    r = client.post("/predict", headers=AUTH, json={"tasks": [{"id": 1, "data": {"image": "data:image/png;base64,AAAA"}}],
                                                    "label_config": template("binary"), "project": "1.1"})
    assert r.status_code == 200 and r.json["results"] == [{"model_version": "untrained", "result": []}]


def test_annotation_events_answer_at_once_and_failed_jobs_keep_serving(client):
    event = {"action": "ANNOTATION_CREATED", "project": {"id": 9}, "annotation": {"id": 1}}
    assert client.post("/webhook", json=event, headers=AUTH).json["status"] == "ignored"  # not set up
    client.application.extensions["labeler"].predictor.registry.project_dir("9", create=True)
    # LABELER_TRAIN_EVERY counts in Label Studio (tests/test_train_every.py); none is known here
    assert client.post("/webhook", json=event, headers=AUTH).status_code == 200
    r = client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": 9}}, headers=AUTH)
    assert r.status_code == 201 and isinstance(r.json["job"], str) and len(r.json["job"]) <= 64
    state = client.application.extensions["labeler"].jobs.wait("9", timeout=30)
    # No Label Studio is configured here: the job fails, says why, and the backend keeps serving.
    assert state["status"] == "failed" and "LABEL_STUDIO_URL" in state["error"]
    assert client.get("/health").json["status"] == "UP"
    job = client.get("/admin/projects/9/job", headers={"Authorization": "Bearer t0k"})
    assert job.status_code == 200 and job.json["status"] == "failed"
    assert client.get("/admin/projects/9/job", headers=AUTH).status_code == 401


def test_metrics_page_html_and_json(client):
    assert "counters" in client.get("/metrics", headers=AUTH).json
    page = client.get("/metrics", headers={**AUTH, "Accept": "text/html"})
    assert page.status_code == 200 and b"<h1>labeler</h1>" in page.data
    chromium = ("text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,image/apng,*/*;q=0.8,"
                "application/signed-exchange;v=b3;q=0.7")
    assert b"<h1>labeler</h1>" in client.get("/metrics", headers={**AUTH, "Accept": chromium}).data


def test_malformed_webhook_is_refused(client):
    assert client.post("/webhook", data="x", content_type="application/json", headers=AUTH).status_code == 400


def test_admin_refuses_paths_and_bad_versions(client):
    admin = {"Authorization": "Bearer t0k"}
    assert client.post("/admin/projects/..%2F..%2Fetc/train", headers=admin).status_code in (400, 401, 404)
    assert client.post("/admin/projects/abc/train", headers=admin).status_code == 400
    for version in ("../..", "/etc", "v1-../../x", 5):
        r = client.post("/admin/projects/1/promote", json={"version": version}, headers=admin)
        assert r.status_code == 400, version
    assert client.post("/admin/projects/1/promote", json={"version": "v7-head"}, headers=admin).status_code == 404
    assert client.post("/admin/projects/1/promote", json={"version": "v7-head"}).status_code == 401
    # a malformed body is refused, not read as a roll-back; an unknown project is not made known by a promote
    for body in ({"data": "{", "content_type": "application/json"}, {"data": {"version": "v1-head"}}, {"json": {}}):
        assert client.post("/admin/projects/1/promote", headers=admin, **body).status_code == 400, body
    assert client.post("/admin/projects/55/promote", json={"version": None}, headers=admin).status_code == 404
    assert "55" not in Registry(client.application.config["LABELER_SETTINGS"].model_dir).projects()


def test_request_body_limit(tmp_path):
    app = create_app(Settings(model_dir=tmp_path, zeroshot_model=None, max_request_mb=0.01),
                     load_in_background=False)
    r = app.test_client().post("/predict", data=b"{" + b" " * 20000 + b"}", content_type="application/json")
    assert r.status_code == 413


def test_restart_finds_a_promotion_whose_refresh_did_not_finish(tmp_path):
    from labeler.models.predictor import Predictor
    from labeler.models.registry import Registry
    from ml_backend.jobs import TrainingJobs

    reg = Registry(tmp_path)
    reg.promote("4", reg.add("4", lambda folder: {"kind": "head"}))
    (tmp_path / "projects" / "4" / "job.json").write_text('{"status": "running", "step": "refreshing predictions"}')
    settings = Settings(model_dir=tmp_path, zeroshot_model=None)
    jobs = TrainingJobs(settings, Predictor(settings), lambda p: None)
    assert jobs.state("4")["status"] == "failed" and jobs.pending_refreshes() == ["4"]


def test_admin_token_travels_beside_basic_auth(client):
    """Basic auth takes the Authorization header, so the admin token has a header of its own too."""
    from flask import request

    from ml_backend.auth import admin_ok

    app = client.application
    settings = app.config["LABELER_SETTINGS"]
    for headers, ok in (({**AUTH, "X-Labeler-Admin-Token": "t0k"}, True), ({**AUTH, "X-Labeler-Admin-Token": "t0"}, False),
                        ({"Authorization": "Bearer t0k"}, True), (AUTH, False)):
        with app.test_request_context(headers=headers):
            assert admin_ok(request, settings) is ok, headers
