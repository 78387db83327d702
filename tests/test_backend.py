"""The Flask app's own behaviour, with Flask's test client (HTTP with Label Studio: the integration tests)."""

from __future__ import annotations

import base64

import pytest

from labeler.config import Settings
from labeler.demo import template
from ml_backend import create_app


@pytest.fixture()
def client(tmp_path):
    app = create_app(Settings(model_dir=tmp_path, zeroshot_model=None, train_every=3, admin_token="t0k",
                              basic_auth_user="ls", basic_auth_pass="pw"), load_in_background=False)
    return app.test_client()


AUTH = {"Authorization": "Basic " + base64.b64encode(b"ls:pw").decode()}


def test_basic_auth_everywhere_but_webhook(client):
    assert client.post("/setup", json={"schema": template("binary")}).status_code == 401
    assert client.post("/setup", json={"schema": template("binary")}, headers=AUTH).status_code == 200
    assert client.post("/webhook", json={"action": "PROJECT_UPDATED", "project": {"id": 1}}).status_code == 200


def test_no_model_gives_empty_results_with_a_reason(client):
    r = client.post("/predict", headers=AUTH, json={"tasks": [{"id": 1, "data": {"image": "data:image/png;base64,AAAA"}}],
                                                    "label_config": template("binary"), "project": "1.1"})
    assert r.status_code == 200 and r.json["results"] == [{"model_version": "untrained", "result": []}]


def test_every_nth_annotation_event_starts_a_job(client):
    event = {"action": "ANNOTATION_CREATED", "project": {"id": 9}, "annotation": {"id": 1}}
    assert client.post("/webhook", json=event).status_code == 200
    assert client.post("/webhook", json=event).status_code == 200
    r = client.post("/webhook", json=event)
    assert r.status_code == 201 and r.json["job"]["trigger"] == "3 annotation events"
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


def test_malformed_webhook_is_refused(client):
    assert client.post("/webhook", data="x", content_type="application/json").status_code == 400
