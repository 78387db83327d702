"""`labeler doctor` and `GET /admin/doctor` against a real Label Studio and real backends, each problem
made on purpose: a bad token, a backend Label Studio cannot reach, a webhook without credentials."""

from __future__ import annotations

import json
import time

import pytest
import requests
from click.testing import CliRunner

from labeler.cli import main
from labeler.dev.demo import template
from labeler.studio.client import Studio
from labeler.studio.tasks import WEBHOOK_SECRET_HEADER

from .conftest import start_tiny_backend

pytestmark = pytest.mark.integration
SECRET = "doctor-hook-secret"


def hooks(ls: Studio, pid: int) -> list[dict]:
    return ls.request("GET", "api/webhooks/", params={"project": pid}).json()


def connect(label_studio, backend_url: str, title: str, secured: bool = True) -> tuple[Studio, int]:
    """A project connected to the backend at ``backend_url``; with ``secured``, once the backend has added
    its credentials to the project's webhook."""
    ls = Studio(*label_studio)
    pid = ls.projects.create(title=title, label_config=template("binary")).id
    ls.ml.create(project=pid, url=backend_url, title="labeler")
    end = time.monotonic() + 60
    while secured and not any((h.get("headers") or {}).get(WEBHOOK_SECRET_HEADER) == SECRET for h in hooks(ls, pid)):
        assert time.monotonic() < end, "the backend never added its credentials to the webhook"
        time.sleep(0.5)
    return ls, pid


@pytest.fixture(scope="module")
def doctor_backend(tmp_path_factory, tiny_model):
    model_dir = tmp_path_factory.mktemp("doctor-model-dir")
    server = start_tiny_backend(model_dir, tiny_model, LABELER_WEBHOOK_SECRET=SECRET)
    yield server.url, model_dir
    server.stop()


@pytest.fixture(scope="module")
def healthy(label_studio, doctor_backend):
    return connect(label_studio, doctor_backend[0], "doctor-healthy")


def doctor(label_studio, backend_url, model_dir, tiny_model, *args: str, **env: str | None):
    """``labeler doctor`` with a full environment (``env`` overrides); returns (exit code, output)."""
    url, token = label_studio
    base: dict[str, str | None] = {
        "LABEL_STUDIO_URL": url, "LABEL_STUDIO_API_KEY": token, "MODEL_DIR": str(model_dir),
        "LABELER_ZEROSHOT_MODEL": str(tiny_model), "LABELER_WEBHOOK_SECRET": SECRET,
        "LABELER_BACKEND_URL": backend_url, "LABELER_LS_USER": "admin@example.com",
        "LABELER_LS_PASSWORD": "test-pass-123", "LABELER_PROJECT": None, "LABELER_PUBLIC_URL": None,
        "BASIC_AUTH_USER": None, "RAY_ADDRESS": None, "RAY_API_SERVER_ADDRESS": None}
    r = CliRunner().invoke(main, ["doctor", "--min-free-gb", "0.001", *args], env={**base, **env})
    return r.exit_code, r.output


def line(output: str, name: str) -> str:
    found = [ln for ln in output.splitlines() if ln.split(" ", 1)[-1].lstrip().startswith(name + ":")]
    assert found, f"no line for {name!r} in:\n{output}"
    return found[0]


def test_all_ok_on_a_healthy_setup(label_studio, doctor_backend, healthy, tiny_model):
    _, pid = healthy
    code, out = doctor(label_studio, doctor_backend[0], doctor_backend[1], tiny_model, "--project", str(pid))
    assert code == 0, out
    assert all(ln.startswith("ok ") for ln in out.splitlines()), out
    assert "legacy token of admin@example.com" in line(out, "token")
    assert "Label Studio 1.23" in line(out, "label studio")
    assert "model ready" in line(out, f"project {pid} ML backend")
    assert "carries the backend's credentials" in line(out, f"project {pid} webhook")
    assert "is on" in line(out, "import flag")
    assert "would load on" in line(out, "zero-shot model")

    code, out = doctor(label_studio, doctor_backend[0], doctor_backend[1], tiny_model, "--project", str(pid),
                       "--json")
    report = json.loads(out)
    assert code == 0 and report["ok"] and {c["status"] for c in report["checks"]} == {"ok"}


@pytest.mark.parametrize("token, kind", [("not-the-token-123", "legacy token"),
                                         ("aaa.bbb.ccc", "personal access token")])
def test_bad_token(label_studio, doctor_backend, healthy, tiny_model, token, kind):
    _, pid = healthy
    code, out = doctor(label_studio, doctor_backend[0], doctor_backend[1], tiny_model, "--project", str(pid),
                       LABEL_STUDIO_API_KEY=token)
    assert code == 1
    bad = line(out, "token")
    assert bad.startswith("FAIL") and f"refused the {kind}" in bad and "fix: set LABEL_STUDIO_API_KEY" in bad
    assert line(out, "projects").startswith("warn")  # not checked with a refused token, and it says so


def test_backend_url_label_studio_cannot_reach(label_studio, tmp_path_factory, tiny_model):
    model_dir = tmp_path_factory.mktemp("doctor-gone")
    gone = start_tiny_backend(model_dir, tiny_model)
    try:
        _, pid = connect(label_studio, gone.url, "doctor-gone", secured=False)
    finally:
        gone.stop()
    code, out = doctor(label_studio, gone.url, model_dir, tiny_model, "--project", str(pid))
    assert code == 1
    bad = line(out, f"project {pid} ML backend")
    assert bad.startswith("FAIL") and f"Label Studio cannot reach the ML backend at {gone.url}" in bad
    assert "fix: give Label Studio a URL of the backend that it can reach" in bad


def test_webhook_without_credentials(label_studio, doctor_backend, tiny_model):
    ls, pid = connect(label_studio, doctor_backend[0], "doctor-webhook")
    for hook in hooks(ls, pid):
        ls.webhooks.update(id=hook["id"], headers={})
    assert not any(h.get("headers") for h in hooks(ls, pid))
    code, out = doctor(label_studio, doctor_backend[0], doctor_backend[1], tiny_model, "--project", str(pid))
    assert code == 1
    bad = line(out, f"project {pid} webhook")
    assert bad.startswith("FAIL") and "has no credentials" in bad and "401" in bad
    assert "LABELER_PUBLIC_URL=" in bad and WEBHOOK_SECRET_HEADER in bad
    # Without the secret in this shell, the probe of the backend's /webhook still tells that it needs one.
    code, out = doctor(label_studio, doctor_backend[0], doctor_backend[1], tiny_model, "--project", str(pid),
                       LABELER_WEBHOOK_SECRET=None)
    assert code == 1 and "has no credentials" in line(out, f"project {pid} webhook")


def test_admin_doctor_json(doctor_backend, healthy):
    url, _ = doctor_backend
    _, pid = healthy
    assert requests.get(f"{url}/admin/doctor", timeout=30).status_code == 401
    r = requests.get(f"{url}/admin/doctor", headers={"Authorization": "Bearer admin-secret"}, timeout=60)
    assert r.status_code == 200, r.text
    checks = {c["name"]: c for c in r.json()["checks"]}
    for name in ("label studio", "token", f"project {pid} label config", f"project {pid} ML backend",
                 f"project {pid} webhook", "zero-shot model", "ray"):
        assert checks[name]["ok"] and checks[name]["status"] == "ok", checks[name]
    assert "loaded on cpu" in checks["zero-shot model"]["detail"]
    assert checks["import flag"]["status"] == "warn" and "--ls-user" in checks["import flag"]["fix"]
