"""Label Studio (real server) <-> labeler backend (real gunicorn) over HTTP, tiny BLIP-2."""

from __future__ import annotations

import base64
import io
import time

import numpy as np
import pytest
import requests
from PIL import Image

from labeler.dev.demo import template, upload_images
from labeler.labelconfig import parse_label_config
from labeler.models.zeroshot import ZeroShotScorer, softmax
from labeler.studio.client import Studio

from .conftest import png_bytes

pytestmark = pytest.mark.integration
CORRUPT = "data:image/png;base64," + base64.b64encode(b"this is not a png at all").decode()


def wait_for(fn, timeout=30, every=0.5):
    end = time.monotonic() + timeout
    while True:
        value = fn()
        if value or time.monotonic() > end:
            return value
        time.sleep(every)


def task_predictions(ls, project):
    resp = ls.request(
        "GET", "api/tasks/", params={"project": project, "fields": "all", "page_size": 100})
    return {t["id"]: t for t in resp.json()["tasks"]}


@pytest.fixture(scope="module")
def project(label_studio, backend, image_dir):
    url, token = label_studio
    ls = Studio(url, token)
    proj = ls.projects.create(title="eyes", label_config=template("binary"))
    files = sorted(image_dir.iterdir())[:6]
    assert upload_images(url, token, proj.id, files) == 6
    inline = [png_bytes(100 + i) for i in range(2)]
    ls.projects.import_tasks(id=proj.id, request=[
        {"image": "data:image/png;base64," + base64.b64encode(b).decode()} for b in inline
    ] + [{"image": CORRUPT}])
    ls.ml.create(project=proj.id, url=backend[0], title="labeler")
    # Label Studio's "Retrieve predictions" (one /predict for the tasks), and the backend's background sync of
    # the project's model_version, which score sorting needs: done here, so no test relies on another's run.
    ls.actions.create(id="retrieve_tasks_predictions", project=proj.id, selected_items={"all": True, "excluded": []})
    wait_for(lambda: (ls.projects.get(id=proj.id).model_version or "").startswith("zeroshot-"))
    expected_bytes = [f.read_bytes() for f in files] + inline
    return ls, proj.id, expected_bytes


def test_predictions_stored_with_choices_scores_and_version(project, backend, tiny_model):
    ls, pid, expected_bytes = project
    tasks = task_predictions(ls, pid)
    assert len(tasks) == 9
    good = [t for t in tasks.values() if t["predictions"] and t["predictions"][0]["result"]]
    corrupt = [t for t in tasks.values() if t["data"]["image"] == CORRUPT]
    assert len(good) == 8, "every readable image gets a prediction, the corrupt one does not stop the batch"
    assert len(corrupt) == 1 and not (corrupt[0]["predictions"] and corrupt[0]["predictions"][0]["result"])

    # Independently recompute what the model should say for each image.
    scorer = ZeroShotScorer.load(str(tiny_model), local_files_only=True)
    config = parse_label_config(template("binary"))
    images = [Image.open(io.BytesIO(b)) for b in expected_bytes]
    proba = softmax(scorer.class_scores(scorer.embed(images).hidden, config.prompts))
    expected = sorted((config.classes[int(p.argmax())], round(float(p.max()), 4)) for p in proba)
    got = sorted((t["predictions"][0]["result"][0]["value"]["choices"][0],
                  round(t["predictions"][0]["score"], 4)) for t in good)
    assert [g[0] for g in got] == [e[0] for e in expected]
    np.testing.assert_allclose([g[1] for g in got], [e[1] for e in expected], atol=2e-3)
    versions = {t["predictions"][0]["model_version"] for t in good}
    assert len(versions) == 1 and next(iter(versions)).startswith("zeroshot-")
    r = good[0]["predictions"][0]["result"][0]
    assert (r["from_name"], r["to_name"], r["type"]) == ("choice", "image", "choices")

    # The backend keeps the project's model_version in step, so score ordering works.
    version = next(iter(versions))
    assert wait_for(lambda: ls.projects.get(id=pid).model_version == version), "model_version not synced"


def test_view_sorted_by_prediction_score_is_ascending(project):
    from labeler.studio.tasks import uncertainty_view

    ls, pid, _ = project
    view = uncertainty_view(ls, pid)
    resp = ls.request(
        "GET", "api/tasks/", params={"project": pid, "view": view, "fields": "all", "page_size": 100})
    tasks = resp.json()["tasks"]
    scores = [t["predictions"][0]["score"] for t in tasks if t["predictions"] and t["predictions"][0]["result"]]
    assert len(scores) == 8 and len(set(scores)) > 1
    assert scores == sorted(scores), "view order must be least confident first"
    ordered = [t["predictions_score"] for t in tasks if t.get("predictions_score") is not None]
    assert ordered == sorted(scores)
    assert ls.projects.get(id=pid).sampling == "Uncertainty sampling"


def test_backend_refuses_bad_setup_and_bad_predict(backend):
    url = backend[0]
    r = requests.post(f"{url}/setup", json={"project": "1.1", "schema": "<View><Text name='t' value='$t'/></View>"})
    assert r.status_code == 400 and "no <Image>" in r.json()["error"]
    r = requests.post(f"{url}/predict", data="not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 400
    r = requests.post(f"{url}/predict", json={"tasks": "nope"})
    assert r.status_code == 400
    r = requests.post(f"{url}/predict", json={"tasks": [{"id": 1, "data": {"image": "/data/upload/x.png"}}],
                                              "label_config": template("binary"), "project": "77.1"})
    assert r.status_code == 200 and r.json()["results"][0]["result"] == []
    assert requests.get(f"{url}/health").json()["status"] == "UP"
    assert requests.post(f"{url}/webhook", json={"action": "PROJECT_UPDATED", "project": {"id": 5}}).status_code == 200
