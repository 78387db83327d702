"""Big selections and first use (issue #25 items 3 and 5): a /predict larger than LABELER_MAX_TASKS_PER_PREDICT
answers what fits and pre-annotates the rest in the background, with its progress and time estimate on the
admin page, /metrics and the model card; the zero-shot model's first download says its size and refuses a
disk that cannot hold it."""

from __future__ import annotations

import base64
import re
import threading
import time

import pytest
import requests

from labeler.config import Settings
from labeler.dev.demo import template
from labeler.errors import NoRoomForModel
from labeler.models import zeroshot
from labeler.models.registry import Registry
from labeler.models.zeroshot import Download, ZeroShotScorer, check_room, pending_download
from labeler.studio.preannotate import Progress, human_duration
from labeler.studio.tasks import model_card_text
from ml_backend import create_app

from .conftest import eyes_project, start_tiny_backend

AUTH = {"Authorization": "Basic " + base64.b64encode(b"ls:pw").decode()}
BEARER = {"Authorization": "Bearer t0k"}


# -- the estimate -------------------------------------------------------------------------------------

def test_estimate_from_the_measured_rate():
    p = Progress(done=100, total=1000, elapsed_s=60.0, predicted=98, failed=2, device="cuda:0")
    assert p.rate == pytest.approx(100 / 60)
    assert p.total_s == pytest.approx(600.0) and p.left_s == pytest.approx(540.0)
    assert p.estimate() == "1.67 tasks/s on cuda:0: about 10 min for all 1,000 tasks, 9 min left"
    d = p.as_dict()
    assert (d["done"], d["total"], d["rate"], d["total_s"], d["left_s"], d["left"]) == (100, 1000, 1.667, 600.0,
                                                                                        540.0, "9 min")
    big = Progress(done=64, total=1_000_000, elapsed_s=0.128)  # an H100's 500 tasks/s
    assert big.total_s == pytest.approx(2000.0) and "about 33 min for all 1,000,000 tasks" in big.estimate()
    none = Progress(done=0, total=50, elapsed_s=0.0)
    assert none.as_dict()["rate"] is None and none.as_dict()["left"] is None and "no rate yet" in none.estimate()
    assert Progress(done=50, total=50, elapsed_s=5.0).left_s == 0


@pytest.mark.parametrize("seconds, text", [(0, "0 s"), (59.4, "59 s"), (90, "2 min"), (3599, "60 min"),
                                           (3600, "1 h 00 min"), (7500, "2 h 05 min"), (90000, "1 d 1 h")])
def test_human_duration(seconds, text):
    assert human_duration(seconds) == text


def test_model_card_shows_the_background_progress():
    running = {"status": "running", "requested": 10_000,
               "progress": Progress(done=3200, total=10_000, elapsed_s=3200.0).as_dict()}
    title, description = model_card_text("zero-shot", None, {}, None, running)
    assert "pre-annotating: 3,200 of 10,000, about 1 h 53 min left" in title
    assert "Pre-annotating in the background: 3,200 of 10,000 tasks; 1 tasks/s on this device" in description
    title, _ = model_card_text("zero-shot", None, {}, None, {"status": "queued", "requested": 500})
    assert "pre-annotating 500 tasks: starting" in title
    done = {"status": "done", "finished": 1_700_000_000, "predicted": 9990, "failed": 10}
    title, description = model_card_text("zero-shot", None, {"status": "running", "step": "fitting"}, None, done)
    assert "pre-annotat" not in title and "training running" in title
    assert "9,990 tasks pre-annotated, 10 failed" in description
    title, _ = model_card_text("zero-shot", None, {}, None, {"status": "failed", "error": "StudioError: down"})
    assert "pre-annotation FAILED" in title


# -- the request: what fits, and no background job without a verified connection -------------------------

@pytest.fixture()
def app(tmp_path):
    return create_app(Settings(model_dir=tmp_path, zeroshot_model=None, admin_token="t0k", basic_auth_user="ls",
                               basic_auth_pass="pw", max_tasks_per_predict=3), load_in_background=False)


def test_tasks_past_the_limit_get_no_prediction_and_no_job_without_a_verified_connection(app, caplog):
    client = app.test_client()
    tasks = [{"id": i, "data": {"image": "data:image/png;base64,AAAA"}} for i in range(1, 6)]
    r = client.post("/predict", headers=AUTH, json={"tasks": tasks, "label_config": template("binary"),
                                                    "project": "4.1700000000"})
    assert r.status_code == 200
    results = r.json["results"]
    assert len(results) == 5 and results[3:] == [[], []], "Label Studio stores nothing for an empty list"
    assert all(isinstance(x, dict) for x in results[:3])
    assert "no verified Label Studio connection" in caplog.text
    st = app.extensions["labeler"]
    assert st.counters["tasks_not_deferred"] == 2 and st.counters["tasks_deferred"] == 0
    assert st.preannotations.state("4") == {"status": "none"}


def test_admin_page_and_metrics_show_progress_and_estimate(tmp_path):
    reg = Registry(tmp_path)
    reg.project_dir("7", create=True)
    app = create_app(Settings(model_dir=tmp_path, zeroshot_model=None, admin_token="t0k"), load_in_background=False)
    jobs = app.extensions["labeler"].preannotations
    progress = Progress(done=320, total=1000, elapsed_s=160.0, device="cpu").as_dict()
    jobs._set("7", status="running", requested=1000, progress=progress, trigger="/predict of 1,005 tasks")
    client = app.test_client()
    from .test_dashboard import HTML, _login

    _login(client)
    text = client.get("/dashboard", headers=HTML).text
    assert re.search(r"Background pre-annotation: <b[^>]*>running</b>\s*· 320 of 1,000 tasks", text)
    assert "estimate: 2 tasks/s on cpu: about 8 min for all 1,000 tasks, 6 min left" in text
    assert 'http-equiv="refresh"' in text
    got = client.get("/dashboard", headers=BEARER).json["projects"]["7"]["preannotation"]
    assert got["progress"]["left_s"] == 340.0
    assert client.get("/metrics").json["projects"]["7"]["preannotation"]["progress"]["done"] == 320


def test_a_restart_marks_an_interrupted_preannotation_failed_and_keeps_its_progress(tmp_path):
    import json

    reg = Registry(tmp_path)
    progress = Progress(done=30, total=90, elapsed_s=10.0).as_dict()
    (reg.project_dir("5", create=True) / "preannotate.json").write_text(
        json.dumps({"status": "running", "requested": 90, "progress": progress}))
    app = create_app(Settings(model_dir=tmp_path, zeroshot_model=None), load_in_background=False)
    st = app.extensions["labeler"].preannotations.state("5")
    assert st["status"] == "failed" and st["error"].startswith("interrupted")
    assert st["requested"] == 90 and st["progress"]["done"] == 30


# -- first use of the real model --------------------------------------------------------------------------

def test_a_download_the_disk_cannot_hold_is_refused(tmp_path):
    big = Download("Salesforce/blip2-itm-vit-g", tmp_path / "hub", zeroshot.KNOWN_DOWNLOAD_BYTES[zeroshot.DEFAULT_MODEL])
    assert "about 4.7 GB" in big.line() and str(tmp_path / "hub") in big.line()
    with pytest.raises(NoRoomForModel) as refused:
        check_room(big, free=3 * 10**9)
    message = str(refused.value)
    assert "4.7 GB" in message and "3.0 GB free" in message and str(tmp_path / "hub") in message
    assert "HF_HUB_CACHE" in message and refused.value.status == 507
    check_room(big, free=6 * 10**9)  # room for it and the margin: goes ahead
    unknown = Download("someone/else", tmp_path, None)
    assert "size unknown" in unknown.line()
    check_room(unknown, free=0)  # size unknown: not refused


def test_what_would_be_downloaded(tmp_path, tiny_model, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    found = pending_download("Salesforce/blip2-itm-vit-g", cache_dir=tmp_path / "hub")
    assert found is not None and found.size == 4_700_000_000 and found.cache_dir == tmp_path / "hub"
    assert pending_download("someone/other-model", cache_dir=tmp_path / "hub").size is None
    assert pending_download(str(tiny_model)) is None, "a local folder is not downloaded"
    assert pending_download("Salesforce/blip2-itm-vit-g", local_files_only=True) is None
    # in the hub cache (config and weights): nothing to say
    snap = tmp_path / "hub" / "models--Salesforce--blip2-itm-vit-g"
    (snap / "refs").mkdir(parents=True)
    (snap / "refs" / "main").write_text("abc")
    (snap / "snapshots" / "abc").mkdir(parents=True)
    for name in ("config.json", "model.safetensors"):
        (snap / "snapshots" / "abc" / name).write_text("{}")
    assert pending_download("Salesforce/blip2-itm-vit-g", cache_dir=tmp_path / "hub") is None


def test_load_refuses_before_downloading(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(zeroshot, "free_bytes", lambda path: 10**9)  # a 1 GB disk
    with pytest.raises(NoRoomForModel, match=r"needs about 4\.7 GB .* has 1\.0 GB free"):
        ZeroShotScorer.load("Salesforce/blip2-itm-vit-g")


# -- with a real Label Studio ---------------------------------------------------------------------------

@pytest.mark.integration
def test_retrieve_predictions_on_a_big_selection(label_studio, tiny_model, tmp_path):
    """Label Studio's "Retrieve predictions" on 48 tasks with at most 5 per /predict: 5 predicted in the
    request, 43 in a background job whose progress and estimate show while it runs, and every task ends
    with one prediction."""
    n, limit = 48, 5
    ls, pid = eyes_project(label_studio, tmp_path / "imgs", n, "big selection", seed=3)
    server = start_tiny_backend(tmp_path / "md", tiny_model, LABELER_MAX_TASKS_PER_PREDICT=str(limit),
                                LABELER_BATCH_SIZE="3")
    try:
        ls.ml.create(project=pid, url=server.url, title="labeler")
        admin = {"Authorization": "Bearer admin-secret"}
        seen: dict[str, list] = {"metrics": [], "cards": []}
        stop = threading.Event()

        def watch_card() -> None:
            while not stop.is_set():
                seen["cards"].append(ls.ml.list(project=pid)[0].title)
                time.sleep(0.1)

        watcher = threading.Thread(target=watch_card, daemon=True)
        watcher.start()
        ls.actions.create(id="retrieve_tasks_predictions", project=pid, selected_items={"all": True, "excluded": []})
        end = time.monotonic() + 240
        state: dict = {}
        while time.monotonic() < end:
            state = requests.get(f"{server.url}/metrics", headers=admin).json()["projects"][str(pid)]["preannotation"]
            seen["metrics"].append(state)
            if state.get("status") in {"done", "failed"}:
                break
            time.sleep(0.05)
        time.sleep(0.5)
        stop.set()
        watcher.join()
        assert state.get("status") == "done", state
        assert state["requested"] == n - limit and state["predicted"] == n - limit and state["failed"] == 0
        running = [s["progress"] for s in seen["metrics"] if s.get("status") == "running" and s.get("progress")]
        assert any(0 < p["done"] < p["total"] for p in running), seen["metrics"]
        assert "tasks/s on cpu: about" in state["progress"]["estimate"]
        assert any(re.search(r"pre-annotating: \d+ of 43", t or "") for t in seen["cards"]), set(seen["cards"])
        tasks = ls.request("GET", "api/tasks/", params={"project": pid, "fields": "all", "page_size": 100}).json()
        preds = {t["id"]: t["predictions"] for t in tasks["tasks"]}
        assert len(preds) == n and all(len(p) == 1 and p[0]["result"] for p in preds.values())
        assert len({p[0]["model_version"] for p in preds.values()}) == 1
        # the estimate next to the progress on the admin page
        page = requests.Session()
        html = {"Accept": "text/html"}
        login = page.get(f"{server.url}/dashboard", headers=html)
        csrf = re.search(r'name="csrf" value="([^"]+)"', login.text).group(1)
        page.post(f"{server.url}/dashboard/login", data={"token": "admin-secret", "csrf": csrf}, headers=html)
        text = page.get(f"{server.url}/dashboard", headers=html).text
        assert re.search(r"Background pre-annotation: <b[^>]*>done</b>\s*· 43 of 43 tasks", text), text[:3000]
        assert "estimate: " in text and "tasks/s on cpu" in text
        card = ls.ml.list(project=pid)[0]
        assert "43 tasks pre-annotated, 0 failed" in (card.description or "")
        log = (tmp_path / "md").glob("*.log")
        assert any("first batch of 3 in" in f.read_text() for f in log)
    finally:
        server.stop()
