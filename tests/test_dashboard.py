"""The admin page (/dashboard): content negotiation, token login, CSRF, promote/rollback, what it shows.

Flask's test client on the real app and a real registry; the page in a real browser is tests/test_browser.py.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
from flask import request

from labeler.config import Settings
from labeler.learning.metrics import evaluate
from labeler.models.registry import Registry
from ml_backend import create_app
from ml_backend.auth import admin_ok

CHROMIUM_ACCEPT = ("text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,image/apng,"
                   "*/*;q=0.8,application/signed-exchange;v=b3;q=0.7")
BEARER = {"Authorization": "Bearer t0k"}
HTML = {"Accept": CHROMIUM_ACCEPT}


def _version(reg: Registry, project: str, n_train: int, seed: int) -> str:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 40)
    proba = np.clip(np.eye(2)[y] * 0.6 + rng.random((40, 2)) * 0.5, 0, None)
    proba /= proba.sum(1, keepdims=True)
    meta = {"kind": "head", "n_train": n_train, "n_eval": 40, "evaluation": "holdout",
            "metrics": evaluate(y, proba, ["open", "closed"]),
            "zeroshot_metrics": evaluate(y, np.full((40, 2), 0.5), ["open", "closed"])}
    return reg.add(project, lambda folder: meta)


@pytest.fixture()
def app(tmp_path):
    reg = Registry(tmp_path)
    names = [_version(reg, "7", n, seed) for seed, n in enumerate((20, 40, 80))]
    reg.promote("7", names[1])
    app = create_app(Settings(model_dir=tmp_path, zeroshot_model=None, admin_token="t0k",
                              basic_auth_user="ls", basic_auth_pass="pw"), load_in_background=False)
    app.config["VERSIONS"] = names
    return app


def _login(client) -> str:
    page = client.get("/dashboard", headers=HTML)
    assert page.status_code == 401 and b'name="token"' in page.data
    csrf = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)
    resp = client.post("/dashboard/login", data={"token": "t0k", "csrf": csrf}, headers=HTML)
    assert resp.status_code == 303, resp.text
    cookie = resp.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/dashboard" in cookie
    return re.search(r'name="csrf" value="([^"]+)"', client.get("/dashboard", headers=HTML).text).group(1)


@pytest.mark.parametrize("accept, html", [
    (CHROMIUM_ACCEPT, True),
    ("text/html", True),
    ("text/html;q=0.5, application/json", False),
    ("*/*", False),
    ("application/json", False),
    (None, False),
])
def test_html_for_browsers_json_for_api_clients(app, accept, html):
    client = app.test_client()
    resp = client.get("/dashboard", headers={**BEARER, **({"Accept": accept} if accept else {})})
    if html:  # a browser without the session cookie gets the login form, whatever header it sends
        assert resp.status_code == 401 and resp.mimetype == "text/html"
    else:
        assert resp.status_code == 200 and resp.mimetype == "application/json"
        assert resp.json["projects"]["7"]["serving"] == app.config["VERSIONS"][1]


def test_json_needs_the_bearer_token_and_page_is_off_without_one(app, tmp_path):
    client = app.test_client()
    assert client.get("/dashboard").status_code == 401
    assert client.get("/dashboard", headers={"Authorization": "Bearer wrong"}).status_code == 401
    off = create_app(Settings(model_dir=tmp_path, zeroshot_model=None), load_in_background=False).test_client()
    assert off.get("/dashboard", headers=HTML).status_code == 404
    assert off.get("/dashboard", headers=BEARER).status_code == 404


def test_login_then_page_shows_versions_plot_and_confusion_matrix(app):
    client = app.test_client()
    names = app.config["VERSIONS"]
    bad = client.get("/dashboard", headers=HTML)
    csrf = re.search(r'name="csrf" value="([^"]+)"', bad.text).group(1)
    assert client.post("/dashboard/login", data={"token": "nope", "csrf": csrf}, headers=HTML).status_code == 401
    assert client.post("/dashboard/login", data={"token": "t0k"}, headers=HTML).status_code == 400  # no CSRF token
    _login(client)
    page = client.get("/dashboard", headers=HTML)
    assert page.status_code == 200 and page.mimetype == "text/html"
    text = page.text
    assert all(n in text for n in names) and f"{names[1]} (serving)" in text
    assert "<svg" in text and "labels the version trained on" in text  # the learning curve, inline
    assert 'class="confusion"' in text and "per class" in text
    meta = Registry(app.config["LABELER_SETTINGS"].model_dir).meta("7", names[1])
    assert f"{meta['metrics']['accuracy']:.4f}" in text and f"{meta['metrics']['eer']:.4f}" in text


def test_guessing_the_bearer_token_is_cut_off_for_the_admin_api_and_the_form(app):
    """Wrong bearer tokens count as the form's do: after ten a minute, the right token is refused too
    (429) on the admin API, the dashboard's JSON and POSTs and the login form, and /metrics gives no
    details, so the answers tell a guesser nothing. Each request counts once."""
    client = app.test_client()
    codes = [client.get(path, headers={"Authorization": f"Bearer guess{i}"}).status_code
             for i, path in enumerate(["/admin/projects/7/job", "/dashboard"] * 5 + ["/admin/projects/7/job"])]
    assert codes == [401] * 10 + [429]
    right = {"Authorization": "Bearer t0k"}
    assert client.get("/admin/projects/7/job", headers=right).status_code == 429
    assert client.get("/dashboard", headers=right).status_code == 429
    assert client.post("/dashboard/projects/7/train", headers=right).status_code == 429
    with app.test_request_context("/metrics", headers={"Authorization": "Basic bHM6cHc=", "X-Labeler-Admin-Token": "t0k"},
                                  environ_base={"REMOTE_ADDR": "127.0.0.1"}):
        assert not admin_ok(request, app.config["LABELER_SETTINGS"])  # what /metrics asks before its details
    csrf = re.search(r'name="csrf" value="([^"]+)"', client.get("/dashboard", headers=HTML).text).group(1)
    assert client.post("/dashboard/login", data={"token": "t0k", "csrf": csrf}, headers=HTML).status_code == 429
    other = {"REMOTE_ADDR": "10.0.0.2"}  # another client is not held back
    assert client.get("/admin/projects/7/job", headers=right, environ_base=other).status_code == 200


def test_wrong_basic_auth_and_no_token_are_no_admin_guesses(app):
    """Basic auth in ``Authorization`` (right or wrong) and requests with no token never count against
    the admin token: Label Studio's calls cannot lock the admin out, nor the admin Label Studio."""
    client = app.test_client()
    for i in range(12):
        client.get("/admin/projects/7/job", headers={"Authorization": f"Basic {i}"})
        client.get("/admin/projects/7/job")
        assert client.get("/metrics", headers={"Authorization": "Basic bHM6d3Jvbmc="}).status_code == 401  # ls:wrong
    both = {"Authorization": "Basic bHM6cHc=", "X-Labeler-Admin-Token": "t0k"}
    assert client.get("/admin/projects/7/job", headers=both).status_code == 200


def test_guessing_the_token_is_cut_off_and_the_cookie_does_not_test_guesses(app, tmp_path):
    client = app.test_client()
    csrf = re.search(r'name="csrf" value="([^"]+)"', client.get("/dashboard", headers=HTML).text).group(1)
    codes = [client.post("/dashboard/login", data={"token": f"guess{i}", "csrf": csrf}, headers=HTML).status_code
             for i in range(12)]
    assert codes[:10] == [401] * 10 and codes[10:] == [429, 429]
    assert client.post("/dashboard/login", data={"token": "t0k", "csrf": csrf}, headers=HTML).status_code == 429
    key = tmp_path / "dashboard-session.key"
    assert len(key.read_bytes()) == 32 and key.stat().st_mode & 0o077 == 0
    # the signing key is not a function of the token alone: another backend with the same token signs otherwise
    other = create_app(Settings(model_dir=tmp_path / "other", zeroshot_model=None, admin_token="t0k"),
                       load_in_background=False)
    assert other.secret_key != app.secret_key
    again = create_app(Settings(model_dir=tmp_path, zeroshot_model=None, admin_token="t0k"), load_in_background=False)
    assert again.secret_key == app.secret_key, "a restart keeps the sessions"


def test_promote_and_rollback_need_the_session_and_its_csrf_token(app):
    client = app.test_client()
    names = app.config["VERSIONS"]
    reg = Registry(app.config["LABELER_SETTINGS"].model_dir)
    # Not logged in, or logged in without the form's CSRF token: refused, nothing changes.
    assert client.post("/dashboard/projects/7/promote", data={"version": names[2]}).status_code == 401
    csrf = _login(client)
    assert client.post("/dashboard/projects/7/promote", data={"version": names[2]}).status_code == 401
    assert client.post("/dashboard/projects/7/promote", data={"version": names[2], "csrf": "x" * 32}).status_code == 401
    assert reg.current("7") == names[1]
    resp = client.post("/dashboard/projects/7/promote", data={"version": names[2], "csrf": csrf}, headers=HTML)
    assert resp.status_code == 303 and reg.current("7") == names[2]
    assert f"project 7 now serves {names[2]}" in client.get("/dashboard", headers=HTML).text
    client.post("/dashboard/projects/7/promote", data={"version": "zero-shot", "csrf": csrf}, headers=HTML)
    assert reg.current("7") is None
    assert client.post("/dashboard/projects/7/promote", data={"version": "../../etc", "csrf": csrf}).status_code == 400
    assert client.post("/dashboard/projects/x7/promote", data={"version": names[0], "csrf": csrf}).status_code == 400


def test_promote_with_the_bearer_token_for_api_clients(app):
    client = app.test_client()
    names = app.config["VERSIONS"]
    resp = client.post("/dashboard/projects/7/promote", json={"version": names[0]}, headers=BEARER)
    assert resp.status_code == 200 and resp.json["serving"] == names[0]
    assert Registry(app.config["LABELER_SETTINGS"].model_dir).current("7") == names[0]
    assert client.post("/dashboard/projects/7/promote", json=["v1"], headers=BEARER).status_code == 400
    assert client.post("/dashboard/projects/7/promote", headers=BEARER).status_code == 400
    assert Registry(app.config["LABELER_SETTINGS"].model_dir).current("7") == names[0]


def test_page_shows_the_last_failure_and_the_running_job(tmp_path):
    """A job the last process left running is reported as failed, with the reason; a running one shows
    for how long and the page refreshes itself."""
    import json
    import time

    reg = Registry(tmp_path)
    _version(reg, "7", 20, 0)
    (reg.project_dir("7") / "job.json").write_text(json.dumps({"status": "running", "step": "fitting",
                                                                "started": time.time() - 30}))
    app = create_app(Settings(model_dir=tmp_path, zeroshot_model=None, admin_token="t0k"), load_in_background=False)
    client = app.test_client()
    _login(client)
    text = client.get("/dashboard", headers=HTML).text
    assert "Last failure: interrupted: the backend stopped while this job was running" in text
    assert 'http-equiv="refresh"' not in text
    jobs = app.extensions["labeler"].jobs
    jobs._set("7", status="running", step="fitting the head", started=time.time() - 12)
    text = client.get("/dashboard", headers=HTML).text
    assert "step: fitting the head" in text and re.search(r"for 1[2-9] s", text)
    assert 'http-equiv="refresh"' in text
    assert client.get("/dashboard", headers=BEARER).json["projects"]["7"]["job"]["step"] == "fitting the head"


def test_finishing_section_and_its_json(app):
    """The forecast, plateau and cost lines per project, on the page with the fitted curve and in the JSON."""
    client = app.test_client()
    fin = client.get("/dashboard", headers=BEARER).json["projects"]["7"]["finishing"]
    assert fin["metric"] == "eer" and [p["labels"] for p in fin["points"]] == [20, 40, 80]
    assert fin["forecast"]["status"] in {"forecast", "reached", "unreachable"} and fin["forecast"]["band"]["n"]
    assert fin["plateau"]["status"] == "not enough versions"  # 80 - 20 labels < the 100-label window
    assert fin["cost"]["source"] == "none" and "preannotate" in fin["cost"]["line"]  # no queue.npz here
    _login(client)
    text = client.get("/dashboard", headers=HTML).text
    assert "<h3>Finishing</h3>" in text and fin["forecast"]["line"] in text and fin["plateau"]["line"] in text
    assert "learning curve and forecast" in text and "training labels" in text  # the forecast plot, inline SVG


def test_annotator_plot_shows_each_person_with_intervals_and_says_nothing_without_any():
    from labeler.learning.annotators import quality_report
    from labeler.models.consensus import MISSING, dawid_skene
    from ml_backend.dashboard import annotators_svg

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    labels = np.where(rng.random((300, 3)) < [0.95, 0.85, 0.7], y[:, None], 1 - y[:, None])
    control = rng.random(300) < 0.2
    shown = np.where(control, MISSING, y)
    report = quality_report(["ann-a", "ann-b", r"x$\undefined$@y"], ["open", "closed"], labels, dawid_skene(labels, 2),
                            np.full(labels.shape, 2.0), shown, control, np.full(300, MISSING))
    svg = annotators_svg(report)
    assert svg.startswith("<svg") and all(n in svg for n in ("ann-a", "ann-b", "blind controls", "pre-annotated"))
    assert "undefined" in svg, "an email with dollar signs is drawn as text, not parsed as TeX"
    assert annotators_svg({"annotators": []}) is None
