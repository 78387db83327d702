"""The retrain loop against a real Label Studio: annotations -> Start training -> new serving version."""

from __future__ import annotations

import time

import pytest
import requests

from labeler.dev.demo import template

from .conftest import eyes_project

pytestmark = pytest.mark.integration
ADMIN = {"Authorization": "Bearer admin-secret"}


def wait_job(backend_url, pid, timeout=240):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        st = requests.get(f"{backend_url}/admin/projects/{pid}/job", headers=ADMIN).json()
        if st.get("status") in {"done", "failed"}:
            return st
        time.sleep(0.5)
    raise TimeoutError(st)


def tasks_of(ls, pid, view=None):
    params = {"project": pid, "fields": "all", "page_size": 200, **({"view": view} if view else {})}
    return ls.request("GET", "api/tasks/", params=params).json()["tasks"]


def annotate(ls, task, label):
    ls.annotations.create(id=task["id"], result=[{"from_name": "choice", "to_name": "image", "type": "choices",
                                                  "value": {"choices": [label]}}])


@pytest.fixture(scope="module")
def studio_project(label_studio, backend, tmp_path_factory):
    ls, pid = eyes_project(label_studio, tmp_path_factory.mktemp("eyes"), 40, "retrain")
    ml = ls.ml.create(project=pid, url=backend[0], title="labeler")
    ls.actions.create(id="retrieve_tasks_predictions", project=pid, selected_items={"all": True, "excluded": []})
    return ls, pid, ml.id


def test_too_few_labels_fails_cleanly_and_keeps_serving(studio_project, backend):
    ls, pid, ml_id = studio_project
    tasks = tasks_of(ls, pid)
    annotate(ls, tasks[0], "open")
    ls.ml.train(id=ml_id)  # Label Studio's "Start training": POST /webhook START_TRAINING
    st = wait_job(backend[0], pid)
    assert st["status"] == "failed" and "too few labels" in st["error"]
    assert requests.get(f"{backend[0]}/versions").json()["versions"] == []
    assert requests.get(f"{backend[0]}/health").json()["status"] == "UP"


def test_start_training_promotes_a_new_version_that_serves(studio_project, backend):
    ls, pid, ml_id = studio_project
    tasks = tasks_of(ls, pid)
    before = {t["predictions"][0]["model_version"] for t in tasks if t["predictions"]}
    assert len(before) == 1 and next(iter(before)).startswith("zeroshot-")
    for t in tasks[1:]:
        annotate(ls, t, "open" if "open_" in t["data"]["image"] else "closed")
    # a cancelled annotation is skipped, not counted as a label
    ls.annotations.create(id=tasks[1]["id"], result=[], was_cancelled=True)

    ls.ml.train(id=ml_id)
    st = wait_job(backend[0], pid)
    assert st["status"] == "done", st
    version = st["version"]
    assert st["promoted"] and st["refreshed"]["predicted"] == 40

    assert version in requests.get(f"{backend[0]}/versions").json()["versions"]
    assert version in [v["version"] if isinstance(v, dict) else v
                       for v in ls.ml.list_model_versions(id=ml_id).versions]
    metrics = requests.get(f"{backend[0]}/metrics").json()["projects"][str(pid)]
    assert metrics["serving"] == version
    meta = metrics["versions"][-1]
    assert meta["n_eval"] == 40 and meta["evaluation"].endswith("cross-validation") and meta["kind"] == "head"
    assert {"accuracy", "eer", "roc_auc", "confusion_matrix", "per_class"} <= set(meta["metrics"])
    assert "accuracy" in meta["zeroshot_metrics"]

    # Label Studio now holds predictions of the new version, and sorts by them.
    assert ls.projects.get(id=pid).model_version == version
    tasks = tasks_of(ls, pid)
    assert all(any(p["model_version"] == version for p in t["predictions"]) for t in tasks)
    # Asked again, the backend answers with the new version too.
    r = requests.post(f"{backend[0]}/predict", json={"tasks": tasks[:2], "label_config": template("binary"),
                                                     "project": f"{pid}.0"}).json()
    assert {x["model_version"] for x in r["results"]} == {version}
    from labeler.studio.tasks import uncertainty_view
    view = uncertainty_view(ls, pid)
    ordered = [t["predictions_score"] for t in tasks_of(ls, pid, view)]
    assert ordered == sorted(ordered) and None not in ordered


def test_admin_api_needs_the_token_and_rollback_serves_again(studio_project, backend):
    ls, pid, _ = studio_project
    url = backend[0]
    assert requests.post(f"{url}/admin/projects/{pid}/train").status_code == 401
    r = requests.post(f"{url}/admin/projects/{pid}/promote", json={"version": None}, headers=ADMIN)
    assert r.status_code == 200 and r.json()["job"]["trigger"] == "promoted zero-shot by admin"
    assert wait_job(url, pid)["status"] == "done"
    # Label Studio's predictions follow: every task holds one prediction, the zero-shot model's
    held = {p["model_version"] for t in tasks_of(ls, pid) for p in t["predictions"]}
    assert len(held) == 1 and next(iter(held)).startswith("zeroshot-"), held
    task = tasks_of(ls, pid)[0]
    out = requests.post(f"{url}/predict", json={"tasks": [task], "label_config": template("binary"),
                                                "project": f"{pid}.0"}).json()
    assert out["results"][0]["model_version"].startswith("zeroshot-")
    assert requests.post(f"{url}/admin/projects/{pid}/promote", json={"version": "v99-x"},
                         headers=ADMIN).status_code == 404


def test_training_self_trains_on_unlabelled_tasks(label_studio, backend, tmp_path):
    ls, pid = eyes_project(label_studio, tmp_path / "eyes", 36, "self-training", seed=3)
    tasks = tasks_of(ls, pid)
    by_class = {c: [t for t in tasks if f"{c}_" in t["data"]["image"]] for c in ("open", "closed")}
    for c, ts in by_class.items():
        for t in ts[:10]:
            annotate(ls, t, c)
    r = requests.post(f"{backend[0]}/admin/projects/{pid}/train", headers=ADMIN)
    assert r.status_code in (200, 201, 202), r.text
    st = wait_job(backend[0], pid)
    assert st["status"] == "failed" and "no Label Studio connection" in st["error"], st

    ls.ml.create(project=pid, url=backend[0], title="labeler")  # /setup hands the backend the connection
    r = requests.post(f"{backend[0]}/admin/projects/{pid}/train", headers=ADMIN)
    assert r.status_code in (200, 201, 202), r.text
    st = wait_job(backend[0], pid)
    assert st["status"] == "done", st
    meta = requests.get(f"{backend[0]}/metrics").json()["projects"][str(pid)]["versions"][-1]
    assert meta["self_training"] == {"method": "self-training", "pool": 16, "threshold": 0.9}
    assert meta["n_train"] == 20 and meta["n_eval"] == 20, "pseudo-labels never count as evaluation labels"
    assert 0 <= meta["train_info"]["pseudo_labels"] <= 16
