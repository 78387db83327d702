"""Self-supervised pretraining through the real backend and a real Label Studio (issue 23): the first
training pretrains the project's encoder, the CNN starts from it, a retraining reuses it, and the
queue's diversity features come from the encoder of the serving version."""

from __future__ import annotations

import json

import numpy as np
import pytest
import requests

from .conftest import eyes_project, start_tiny_backend
from .test_integration_training import ADMIN, annotate, tasks_of, wait_job

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def cnn_backend(tmp_path_factory, tiny_model):
    model_dir = tmp_path_factory.mktemp("model_dir")
    server = start_tiny_backend(model_dir, tiny_model, LABELER_CLASSIFIER="cnn", LABELER_MIN_PER_CLASS="3",
                                LABELER_PRETRAIN_MIN_IMAGES="20", LABELER_PRETRAIN_STEPS="4",
                                LABELER_SELF_TRAIN_POOL="30", LABELER_CONSISTENCY="on")
    yield server.url, model_dir
    server.stop()


def _train(url: str, pid: int) -> dict:
    r = requests.post(f"{url}/admin/projects/{pid}/train", headers=ADMIN)
    assert r.status_code in (200, 201, 202), r.text
    # Generous: with ten labels of each class, five cross-validation folds and three members fine-tune with FixMatch
    st = wait_job(url, pid, timeout=900)
    assert st["status"] == "done", st
    return requests.get(f"{url}/metrics").json()["projects"][str(pid)]["versions"][-1]


def test_first_training_pretrains_once_and_the_queue_uses_the_encoder(label_studio, cnn_backend, tmp_path):
    url, model_dir = cnn_backend
    ls, pid = eyes_project(label_studio, tmp_path / "eyes", 30, "pretraining", seed=5)
    ls.ml.create(project=pid, url=url, title="labeler")
    tasks = tasks_of(ls, pid)
    by_class = {c: [t for t in tasks if f"{c}_" in t["data"]["image"]] for c in ("open", "closed")}
    for c, ts in by_class.items():
        for t in ts[:5]:
            annotate(ls, t, c)

    first = _train(url, pid)
    versions = model_dir / "encoders" / "projects" / str(pid) / "versions"
    assert first["encoder"] == "v1-simclr" and (versions / "v1-simclr" / "encoder.pt").exists()
    enc_meta = json.loads((versions / "v1-simclr" / "meta.json").read_text())
    assert enc_meta["images"] == 30 and enc_meta["steps"] == 4, "every task image, labelled or not"
    assert first["train_info"]["encoder"] is True, "the CNN started from the encoder, not ImageNet"
    assert first["self_training"] == {"pool": 20, "method": "seeded k-means", "threshold": None}
    # Five labels of each class: the CNN trains only its head, on the labels and the pool's seeded k-means classes
    assert first["train_info"]["probe_only"] and first["train_info"]["pseudo_labels"] == 20
    assert "unlabelled" not in first["train_info"], "no FixMatch steps: nothing was fine-tuned"
    # 10 labels: served as a three-CNN ensemble (LABELER_ENSEMBLE=auto), cross-validation scoring one member
    assert first["ensemble"] == {"members": 3, "evaluated": "one member (5-fold cross-validation)"}
    assert first["train_info"]["members"] == 3
    assert (model_dir / "projects" / str(pid) / "versions" / first["version"] / "member-2").exists()

    for c, ts in by_class.items():
        for t in ts[5:10]:
            annotate(ls, t, c)
    tuned = _train(url, pid)
    assert not tuned["train_info"]["probe_only"] and tuned["train_info"]["unlabelled"] == 10, \
        "ten labels of each class: fine-tuned, with FixMatch on the 10 unlabelled task images"
    assert not tuned["train_info"]["teacher_warm_start"], "a probe-only version has no fine-tuned weights to lend"
    if not tuned["promoted"]:
        r = requests.post(f"{url}/admin/projects/{pid}/promote", headers=ADMIN, json={"version": tuned["version"]})
        assert r.status_code == 200, r.text
        assert wait_job(url, pid)["status"] == "done"
    annotate(ls, by_class["open"][10], "open")
    second = _train(url, pid)
    assert second["encoder"] == "v1-simclr"
    assert second["train_info"]["teacher_warm_start"], "the ensemble's members start from the serving ensemble's"
    assert sorted(p.name for p in versions.iterdir() if not p.name.startswith(".")) == ["v1-simclr"], \
        "a retraining reuses the encoder: pretraining is per project, not per fit"

    if not second["promoted"]:  # the queue follows the serving version: serve this one (its refresh re-scores)
        r = requests.post(f"{url}/admin/projects/{pid}/promote", headers=ADMIN, json={"version": second["version"]})
        assert r.status_code == 200, r.text
        assert wait_job(url, pid)["status"] == "done"
    with np.load(model_dir / "projects" / str(pid) / "queue.npz", allow_pickle=False) as z:
        assert str(z["features_from"]) == "v1-simclr"
        assert len(z["ids"]) == 30
